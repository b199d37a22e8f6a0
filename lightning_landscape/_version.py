"""The package version, in one place (the records' meta and ``lightning_landscape.__version__`` read it)."""

__version__ = "0.1.0"
