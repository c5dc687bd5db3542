"""CrashChat Platform: train, evaluate and serve CrashChat on Ray."""

__version__ = "0.1.0"
