"""Which models and versions exist, their state, and the loaded model + scheduler of each served one."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .batching import Scheduler
from .errors import ConfigError, ModelNotFound, ModelUnavailable
from .observability.statistics import ModelStatistics
from .repository import ModelSpec, load_spec, scan
from .runtime import TorchScriptModel, load_model

log = logging.getLogger("torchwire.registry")


class State(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(eq=False)
class ServedVersion:
    name: str
    version: int
    spec: ModelSpec
    model: TorchScriptModel
    scheduler: Scheduler
    stats: ModelStatistics


@dataclass(eq=False)
class ModelEntry:
    name: str
    state: State = State.LOADING
    reason: str = ""
    versions: tuple[int, ...] = ()  # every version folder found
    states: dict[int, tuple[State, str]] = field(default_factory=dict)
    served: dict[int, ServedVersion] = field(default_factory=dict)

    def default_version(self) -> ServedVersion | None:
        return self.served[max(self.served)] if self.served else None


class Registry:
    def __init__(self, root: Path, threads: int, cores: int) -> None:
        self.root = root
        self._threads = threads  # 0: share the cores among each model's instances
        self._cores = cores
        self._models: dict[str, ModelEntry] = {}
        self.loaded = False  # the first scan of the repository has finished

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return entry

    def lookup(self, name: str, version: str = "") -> ServedVersion:
        """The served version a request names ("" means the highest), or ModelNotFound/ModelUnavailable."""
        entry = self.entry(name)
        if version:
            if not version.isdigit() or int(version) not in entry.versions:
                found = ", ".join(map(str, entry.versions)) or "none"
                raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {found})")
            served = entry.served.get(int(version))
            if served is None:
                state, reason = entry.states.get(int(version), (State.UNAVAILABLE, "not served"))
                raise ModelUnavailable(f"model '{name}' version {version} is {state.value}: {reason}")
            return served
        served = entry.default_version()
        if served is None:
            raise ModelUnavailable(
                f"model '{name}' is {entry.state.value}: {entry.reason or 'no version is ready'}"
            )
        return served

    def ready(self) -> bool:
        return self.loaded and any(e.served for e in self._models.values())

    async def load_all(self) -> None:
        """Load every model in the repository; a model that fails is UNAVAILABLE with its reason."""
        for source in scan(self.root):
            entry = ModelEntry(source.name, versions=source.versions)
            self._models[source.name] = entry
        await asyncio.gather(*(self._load(entry) for entry in self._models.values()))
        self.loaded = True

    async def _load(self, entry: ModelEntry) -> None:
        model_dir = self.root / entry.name
        try:
            spec = load_spec(model_dir)
            if not entry.versions:
                raise ConfigError(
                    f"{model_dir}: no version folder (expected {model_dir}/1/{spec.model_file})"
                )
            version = max(entry.versions)  # versions before the highest are not served yet
            path = model_dir / str(version) / spec.model_file
            entry.states[version] = (State.LOADING, "")
            threads = spec.intra_op_threads or self._threads or max(1, self._cores // spec.instances)
            model = await asyncio.to_thread(load_model, path, spec, threads)
        except ConfigError as exc:
            entry.state, entry.reason = State.UNAVAILABLE, str(exc)
            for v in entry.versions:
                entry.states[v] = (State.UNAVAILABLE, str(exc))
            log.error("model %s unavailable: %s", entry.name, exc)
            return
        stats = ModelStatistics()
        scheduler = Scheduler(
            model.run,
            name=entry.name,
            max_batch_size=spec.max_batch_size,
            policy=spec.batching,
            instances=spec.instances,
            stats=stats,
        )
        entry.served[version] = ServedVersion(entry.name, version, spec, model, scheduler, stats)
        entry.states[version] = (State.READY, "")
        entry.state, entry.reason = State.READY, ""
        for v in entry.versions:
            entry.states.setdefault(v, (State.UNAVAILABLE, f"not served: version {version} is the highest"))
        log.info(
            "model %s version %d ready (%s; %d instance(s) x %d thread(s))",
            entry.name,
            version,
            path,
            spec.instances,
            threads,
        )

    async def close(self) -> None:
        for entry in self._models.values():
            for served in entry.served.values():
                await served.scheduler.close()
                served.model.close()
            entry.served.clear()
