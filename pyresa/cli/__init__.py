"""Command-line interface: `pyresa generate|chat|serve|eval`."""
