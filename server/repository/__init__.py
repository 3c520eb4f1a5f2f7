"""The model repository on disk: model folders, their versions and their config.pbtxt."""

from .config import BatchingPolicy, ModelSpec, QueuePolicy, TensorSpec, load_spec
from .scanner import ModelSource, scan

__all__ = ["BatchingPolicy", "ModelSource", "ModelSpec", "QueuePolicy", "TensorSpec", "load_spec", "scan"]
