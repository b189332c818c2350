"""The ``hyper`` command-line client: a thin, synchronous front end to hyperd's REST API."""

__version__ = "0.1.0"
