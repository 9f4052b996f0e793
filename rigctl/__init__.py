"""rigctl: closed-loop controller for microelectrode-array rigs with cultured neurons."""

__version__ = "0.1.0"
