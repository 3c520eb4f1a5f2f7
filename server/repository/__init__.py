"""The model repository on disk: model folders, their versions and their config.pbtxt."""

from .config import (
    BatchingPolicy,
    ModelSpec,
    QueuePolicy,
    TensorSpec,
    VersionPolicy,
    WarmupSample,
    build_spec,
    load_spec,
    read_config,
)
from .scanner import ModelSource, scan

__all__ = [
    "BatchingPolicy",
    "ModelSource",
    "ModelSpec",
    "QueuePolicy",
    "TensorSpec",
    "VersionPolicy",
    "WarmupSample",
    "build_spec",
    "load_spec",
    "read_config",
    "scan",
]
