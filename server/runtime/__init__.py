"""Loads models and runs their forward passes: the only part of the server that imports torch, and
the one seam to threads. TorchScript, ExportedPrograms and AOTInductor packages, behind one interface."""

from .loader import load_forward, load_model, model_config
from .model import LoadedModel

__all__ = ["LoadedModel", "load_forward", "load_model", "model_config"]
