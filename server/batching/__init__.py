"""Dynamic batching: one scheduler per served model version."""

from .scheduler import Scheduler

__all__ = ["Scheduler"]
