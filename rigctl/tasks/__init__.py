"""Closed-loop tasks: environments whose state an agent's decisions change (a network now, a culture later)."""
