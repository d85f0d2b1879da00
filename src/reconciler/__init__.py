"""reconciler: email marketing as code."""

__version__ = "0.4.0"
