"""Statistics, metrics, tracing and logs: how operators see a running server."""

from .logs import configure_logging, route_torch_logs

__all__ = ["configure_logging", "route_torch_logs"]
