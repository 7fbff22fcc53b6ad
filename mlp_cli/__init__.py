"""mlp-cli: neural networks written from scratch in NumPy, trained from the command line."""

__version__ = "0.1.0"
