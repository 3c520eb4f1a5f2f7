"""Runs TorchScript: the only part of the server that imports torch, and the one seam to threads."""

from .torchscript import TorchScriptModel, load_model

__all__ = ["TorchScriptModel", "load_model"]
