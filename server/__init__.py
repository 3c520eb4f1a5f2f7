"""torchwire's server: serves a Triton-layout repository of TorchScript models over gRPC (KServe v2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import Settings

if TYPE_CHECKING:
    from .app import App

__all__ = ["App", "Settings"]


def __getattr__(name: str) -> Any:
    # App pulls in torch; importing it lazily keeps `torchwire --help` and `torchwire bench` light.
    if name == "App":
        from .app import App

        return App
    raise AttributeError(name)
