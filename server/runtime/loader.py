"""The one place that picks how a model file loads, by the platform its config names."""

from __future__ import annotations

from pathlib import Path

from torchwire.client._proto import model_config_pb2 as mc

from ..core.errors import ConfigError, ModelExecutionError
from ..repository import ModelSpec, read_config
from ..repository.config import CONFIG_FILE
from ..repository.scanner import versions_of
from .archives import TORCHSCRIPT
from .exported import load_exported, read_signature
from .model import Forward, LoadedModel
from .signature import completed_config, completed_from
from .torchscript import load_torchscript
from .warmup import probe_batch, warmup_batches

EXPORTED_FILE = "model.pt2"


def load_forward(path: Path, spec: ModelSpec) -> Forward:
    """Blocking: the model file's forward pass, loaded as its config's platform says."""
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found (config field 'default_model_filename' names it)")
    if spec.platform == TORCHSCRIPT:
        return load_torchscript(path, spec)
    return load_exported(path, spec)


def load_model(path: Path, spec: ModelSpec, threads: int, inline_us: int = 0) -> LoadedModel:
    """Blocking: load the model file (load_forward), then start its instance threads, each of which
    runs the warmup batches on itself before serving; returns once all are warm."""
    forward = load_forward(path, spec)
    try:
        batches = warmup_batches(spec)
    except ConfigError as exc:
        raise ConfigError(f"{path}: warmup failed: {exc}") from exc
    probe = probe_batch(spec) if inline_us > 0 else None
    model = LoadedModel(forward, spec, threads, batches, probe, inline_us * 1000)
    try:
        model.wait_warm()
    except (ModelExecutionError, ConfigError) as exc:
        model.close()
        raise ConfigError(f"{path}: warmup failed: {exc}") from exc
    return model


def model_config(model_dir: Path) -> mc.ModelConfig:
    """Blocking: the folder's config.pbtxt, or, without one, the config its exported program implies
    (Triton's auto-complete), from the highest version's model.pt2. A config.pbtxt that lists no
    inputs or no outputs is completed from that program the same way (completed_from)."""
    versions = versions_of(model_dir) if model_dir.is_dir() else ()
    if (model_dir / CONFIG_FILE).exists():
        config = read_config(model_dir)
        if (config.input and config.output) or config.platform == TORCHSCRIPT or not versions:
            return config  # complete, or nothing to complete it from: build_spec names what is missing
        named = model_dir / str(max(versions)) / (config.default_model_filename or EXPORTED_FILE)
        if named.suffix != ".pt2" or not named.is_file():
            return config
        kind, signature = read_signature(named)
        return config if signature is None else completed_from(config, signature, kind)
    path = model_dir / str(max(versions)) / EXPORTED_FILE if versions else None
    if path is None or not path.is_file():
        raise ConfigError(
            f"{model_dir / CONFIG_FILE}: not found; a model folder without one needs an exported program "
            f"to complete it from (a version folder with {EXPORTED_FILE}); TorchScript needs a {CONFIG_FILE}"
        )
    kind, signature = read_signature(path)
    if signature is None:
        raise ConfigError(
            f"{path}: this AOTInductor package records no signature (it was not built by `torchwire "
            f"export`), so its inputs and outputs are unknown: write a {CONFIG_FILE}"
        )
    return completed_config(signature, model_dir.name, kind)
