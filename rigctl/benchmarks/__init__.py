"""Benchmark harnesses (`rigctl bench ...`, bench/*.py): they assemble simulated parts, emulators and drivers,
so they sit in the composition root beside the CLI, never below it (tests/test_layers.py)."""
