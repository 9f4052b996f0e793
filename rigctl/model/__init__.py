"""The free-energy model of Isomura et al. (2023)."""
