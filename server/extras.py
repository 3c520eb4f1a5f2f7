"""The optional extras and the one way a command says it needs one that is not installed.

`pip install 'torchwire[server]'` (the README's server install) runs `torchwire serve` with every flag
but those listed here. Code that needs an extra imports it inside `needs(...)`; `cli.main` turns the
MissingExtra into one line that names the extra to install, and exit status 1: no traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# What each extra brings over the server extra, as import names (pyproject.toml lists the packages).
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("rich", "matplotlib"),
    "trace": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc"),
}


class MissingExtra(Exception):
    """`command` needs `extra`, and `module` of it is not installed."""

    def __init__(self, command: str, extra: str, module: str) -> None:
        super().__init__(
            f"{command}: needs the {extra} extra ({module} is missing): pip install 'torchwire[{extra}]'"
        )
        self.extra = extra
        self.module = module


def _provided_by(extra: str, missing: str) -> str | None:
    """The extra's module that a ModuleNotFoundError for `missing` means (a package or a parent of it)."""
    for module in EXTRAS[extra]:
        if missing == module or missing.startswith(module + ".") or module.startswith(missing + "."):
            return module
    return None


@contextlib.contextmanager
def needs(extra: str, command: str) -> Iterator[None]:
    """Imports in this block that fail for lack of `extra` raise MissingExtra; other failures stay as
    they are (a module missing from an extra that is installed is a broken install, not a hint)."""
    try:
        yield
    except ModuleNotFoundError as exc:
        module = _provided_by(extra, exc.name or "")
        if module is None:
            raise
        raise MissingExtra(command, extra, module) from exc
