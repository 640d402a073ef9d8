"""taskstream: a durable task queue on Redis Streams."""

__version__ = "0.1.0"
