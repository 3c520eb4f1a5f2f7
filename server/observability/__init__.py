"""Statistics, metrics, tracing and logs: how operators see a running server."""

from .logs import configure_logging

__all__ = ["configure_logging"]
