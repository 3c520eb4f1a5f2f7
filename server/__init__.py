"""torchwire's server: serves a Triton-layout repository of TorchScript models over gRPC (KServe v2)."""

from .app import App
from .settings import Settings

__all__ = ["App", "Settings"]
