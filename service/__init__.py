"""The Lumbar CDS web service: FastAPI application, settings, storage, and the ``lumbar`` command line."""

__version__ = "0.1.0"
