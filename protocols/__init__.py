"""The protocol library (YAML files), installed as package data of `rigctl.protocols`."""
