"""tchat: a live-streaming backend in Python."""

__version__ = "0.1.0"
