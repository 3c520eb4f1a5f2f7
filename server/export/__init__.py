"""`torchwire export`: turn a PyTorch module into a ready model folder (`model.pt2` + `config.pbtxt`)."""

from .build import EXPORT_KINDS, ExportError, export_module, export_torchscript, write_model_folder

__all__ = ["EXPORT_KINDS", "ExportError", "export_module", "export_torchscript", "write_model_folder"]
