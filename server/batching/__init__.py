"""Dynamic batching: one scheduler per served model version."""

from .scheduler import Completed, Scheduler

__all__ = ["Completed", "Scheduler"]
