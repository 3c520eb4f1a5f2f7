"""Which models and versions exist, their states, and the loaded model + scheduler of each served one.

Lifecycle without downtime: a model (re)load builds every version its version_policy selects *beside*
the ones serving, warms each up, and only then swaps the served set in one step. Versions that leave
the set finish their queued and running requests before they unload. A version that fails to load
never takes traffic; if nothing new loaded, the versions serving before keep serving.

Every change happens on the event loop, and a request looks up its version and joins that version's
queue within one loop step, so a swap never strands a request on a closing scheduler.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torchwire.client._proto import model_config_pb2 as mc

from ..batching import Scheduler
from ..observability.statistics import ModelStatistics
from ..repository import ModelSpec, build_spec, scan
from ..repository.scanner import versions_of
from ..runtime import LoadedModel, load_model, model_config
from .errors import ConfigError, InvalidRequest, ModelNotFound, ModelUnavailable

log = logging.getLogger("torchwire.registry")

# A model name is a plain folder name inside the repository: no paths, no "..", nothing hidden.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also accepts "¹"


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
    model: LoadedModel
    scheduler: Scheduler
    stats: ModelStatistics
    fingerprint: tuple[object, ...]


@dataclass(eq=False)
class ModelEntry:
    name: str
    state: State = State.LOADING
    reason: str = ""
    states: dict[int, tuple[State, str]] = field(default_factory=dict)  # every version known
    served: dict[int, ServedVersion] = field(default_factory=dict)
    wanted: bool = True  # asked to serve (explicit mode: loaded and not unloaded)
    fingerprint: tuple[object, ...] = ()  # of the files at the last load attempt
    load_failures: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self.states))

    def default_version(self) -> ServedVersion | None:
        return self.served[max(self.served)] if self.served else None


def _file_stamp(path: Path) -> tuple[object, ...]:
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), stat.st_mtime_ns, stat.st_size)


class Registry:
    def __init__(
        self, root: Path, threads: int, cores: int, *, require_all: bool = True, inline_us: int = 0
    ) -> None:
        self.root = root
        self._inline_us = inline_us  # 0: never inline (runtime/inline.py)
        self._threads = threads  # 0: share the cores among each model's instances
        self._cores = cores
        self._require_all = require_all
        self._models: dict[str, ModelEntry] = {}
        self.loaded = False  # the first load of the repository has finished
        self.on_change: Callable[[], Awaitable[None]] | None = None

    # -- lookups (request path) --------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return entry

    def lookup(self, name: str, version: str = "") -> ServedVersion:
        """The served version a request names ("" means the highest), or ModelNotFound/ModelUnavailable."""
        entry = self.entry(name)
        if version:
            if not _VERSION.fullmatch(version) or int(version) not in entry.states:
                found = ", ".join(map(str, entry.versions)) or "none"
                raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {found})")
            served = entry.served.get(int(version))
            if served is None:
                state, reason = entry.states[int(version)]
                raise ModelUnavailable(
                    f"model '{name}' version {version} is {state.value}: {reason or 'not served'}"
                )
            return served
        served = entry.default_version()
        if served is None:
            raise ModelUnavailable(
                f"model '{name}' is {entry.state.value}: {entry.reason or 'no version is ready'}"
            )
        return served

    def ready(self) -> bool:
        """Ready when every model asked for serves (or, relaxed, when any does); never when none does."""
        wanted = [e for e in self._models.values() if e.wanted]
        serving = [e for e in wanted if e.served]
        if not self.loaded or not serving:
            return False
        return len(serving) == len(wanted) if self._require_all else True

    # -- lifecycle ---------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """The folder of a model named by a caller: a plain name inside the repository, or an error."""
        if not _MODEL_NAME.fullmatch(name) or name in {".", ".."}:
            raise InvalidRequest(
                f"model name '{name}' is not a plain folder name (letters, digits, '_', '.', '-'; no paths)"
            )
        path = self.root / name
        if path.resolve().parent != self.root.resolve():  # a symlink pointing out of the repository
            raise InvalidRequest(f"model '{name}' resolves outside the repository")
        if not (
            (path.is_dir() and ((path / "config.pbtxt").exists() or versions_of(path)))
            or name in self._models
        ):
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return path

    def fingerprint(self, model_dir: Path) -> tuple[object, ...]:
        """What must change on disk for a poll to reload the model: its config and its model files."""
        stamps: list[object] = [_file_stamp(model_dir / "config.pbtxt")]
        if model_dir.is_dir():
            for version in versions_of(model_dir):
                folder = model_dir / str(version)
                stamps.extend(_file_stamp(f) for f in sorted(folder.iterdir()) if f.is_file())
        return tuple(stamps)

    async def load_all(
        self, names: list[str] | None = None, configs: Mapping[str, mc.ModelConfig | None] | None = None
    ) -> None:
        """The first load: every model in the repository (or only `names`, in explicit mode), each
        with its config in `configs` where one is given there (else its config.pbtxt)."""
        sources = scan(self.root)
        for source in sources:
            entry = self._models.setdefault(source.name, ModelEntry(source.name))
            entry.wanted = names is None or source.name in names
            if not entry.wanted:
                entry.state, entry.reason = State.UNAVAILABLE, "not loaded (explicit model control)"
        missing = [n for n in names or [] if n not in self._models]
        for name in missing:
            log.error("model %s asked for with --load-model is not in the repository", name)
        given = configs or {}
        loads = [self.load(e.name, given.get(e.name)) for e in self.entries() if e.wanted]
        await asyncio.gather(*loads, return_exceptions=True)
        self.loaded = True
        await self._changed()

    async def load(self, name: str, config_override: mc.ModelConfig | None = None) -> ModelEntry:
        """(Re)load a model: new versions load and warm up beside the serving ones, then swap in."""
        model_dir = self.model_dir(name)
        entry = self._models.setdefault(name, ModelEntry(name))
        async with entry.lock:
            entry.wanted = True
            entry.fingerprint = self.fingerprint(model_dir)
            try:
                # Without a config.pbtxt, an exported program's own signature completes one.
                config = config_override
                if config is None:
                    config = await asyncio.to_thread(model_config, model_dir)
                spec = build_spec(model_dir, config)
                found = versions_of(model_dir)
                if not found:
                    raise ConfigError(
                        f"{model_dir}: no version folder (expected {model_dir}/1/{spec.model_file})"
                    )
            except ConfigError as exc:
                on_disk = versions_of(model_dir) if model_dir.is_dir() else ()
                self._forget_removed(entry, set(on_disk))
                self._fail_model(entry, str(exc), on_disk)
                await self._changed()
                raise
            self._forget_removed(entry, set(found))
            chosen = spec.version_policy.select(found)
            for version in found:
                if version not in chosen and version not in entry.served:
                    entry.states[version] = (State.UNAVAILABLE, "not selected by the version_policy")
            loaded = await asyncio.gather(*(self._load_version(entry, spec, v) for v in chosen))
            fresh = {s.version: s for s in loaded if s is not None}
            failures = [entry.states[v][1] for v in chosen if entry.states[v][0] is State.UNAVAILABLE]
            if not fresh and entry.served:
                # Nothing new took: what served before keeps serving, and the caller hears why.
                await self._changed()
                raise ConfigError(
                    f"model '{name}': no selected version loaded ({'; '.join(failures)}); "
                    f"versions {sorted(entry.served)} keep serving"
                )
            retired = [s for v, s in entry.served.items() if fresh.get(v) is not s]
            entry.served = fresh
            if fresh:
                entry.state, entry.reason = State.READY, ""
            else:
                entry.state, entry.reason = (
                    State.UNAVAILABLE,
                    "; ".join(failures) or "no version could be loaded",
                )
            await self._changed()
            await self._retire(entry, retired, set(found))
            if not fresh:
                raise ConfigError(f"model '{name}': {entry.reason}")
            return entry

    async def _load_version(self, entry: ModelEntry, spec: ModelSpec, version: int) -> ServedVersion | None:
        path = self.root / entry.name / str(version) / spec.model_file
        fingerprint = (spec.config.SerializeToString(deterministic=True), _file_stamp(path))
        current = entry.served.get(version)
        if current is not None and current.fingerprint == fingerprint:
            return current  # unchanged: keep serving it as it is
        entry.states[version] = (State.LOADING, "")
        threads = spec.threads_per_instance(self._threads, self._cores)
        try:
            model = await asyncio.to_thread(load_model, path, spec, threads, self._inline_us)
        except ConfigError as exc:
            log.error("model %s version %d failed to load: %s", entry.name, version, exc)
            entry.load_failures += 1
            if current is None:
                entry.states[version] = (State.UNAVAILABLE, str(exc))
            else:  # the version loaded before keeps serving
                entry.states[version] = (State.READY, f"reload failed, the previous load serves: {exc}")
            return current
        stats = current.stats if current is not None else ModelStatistics()
        scheduler = Scheduler(
            model.run,
            name=entry.name,
            max_batch_size=spec.max_batch_size,
            policy=spec.batching,
            instances=spec.instances,
            stats=stats,
            inline=model,
        )
        entry.states[version] = (State.READY, "")
        log.info(
            "model %s version %d ready (%s; %d instance(s) x %d thread(s)%s%s)",
            entry.name,
            version,
            path,
            spec.instances,
            threads,
            "; optimized for inference" if spec.optimize else "",
            f"; {model.inline_rule.summary()}" if model.inline_rule is not None else "",
        )
        return ServedVersion(entry.name, version, spec, model, scheduler, stats, fingerprint)

    @staticmethod
    def _forget_removed(entry: ModelEntry, on_disk: set[int]) -> None:
        """A version gone from disk that does not serve (failed, unloaded) leaves the index at once;
        a serving one leaves once it has drained (_retire)."""
        for version in [v for v in entry.states if v not in on_disk and v not in entry.served]:
            del entry.states[version]

    def _fail_model(self, entry: ModelEntry, reason: str, versions: tuple[int, ...]) -> None:
        log.error("model %s unavailable: %s", entry.name, reason)
        entry.load_failures += 1
        if entry.served:  # a broken config never takes traffic: what serves keeps serving
            entry.reason = f"reload failed, previous load keeps serving: {reason}"
            return
        entry.state, entry.reason = State.UNAVAILABLE, reason
        for version in versions:
            entry.states[version] = (State.UNAVAILABLE, reason)

    async def _retire(self, entry: ModelEntry, retired: list[ServedVersion], on_disk: set[int]) -> None:
        """Versions leaving service answer their queued and running requests, then unload."""
        for served in retired:
            if entry.served.get(served.version) is None:
                entry.states[served.version] = (State.UNLOADING, "")
        await asyncio.gather(*(s.scheduler.close() for s in retired))
        for served in retired:
            await asyncio.to_thread(served.model.close)
            if entry.served.get(served.version) is None:
                if served.version in on_disk:
                    entry.states[served.version] = (State.UNAVAILABLE, "unloaded")
                else:
                    entry.states.pop(served.version, None)
            log.info("model %s version %d unloaded", entry.name, served.version)

    async def unload(self, name: str) -> None:
        """Stop serving a model: it takes no new requests, answers its queued ones, then unloads."""
        self.model_dir(name)
        entry = self.entry(name)
        async with entry.lock:
            entry.wanted = False
            entry.state, entry.reason = State.UNAVAILABLE, "unloaded"
            await self._withdraw(entry, set(entry.states))

    async def poll(self) -> None:
        """Rescan: load new models, reload changed ones, unload removed ones."""
        on_disk = {s.name for s in scan(self.root) if (s.path / "config.pbtxt").exists() or s.versions}
        for name in sorted(on_disk):
            entry = self._models.get(name)
            if entry is None or entry.fingerprint != self.fingerprint(self.root / name):
                try:
                    await self.load(name)
                except Exception as exc:  # reported in the index and the log; polling goes on
                    log.error("model %s: %s", name, exc)
        for name in sorted(set(self._models) - on_disk):
            await self.unload_removed(name)

    async def unload_removed(self, name: str) -> None:
        entry = self._models[name]
        async with entry.lock:
            entry.wanted = False  # gone from disk: no longer asked for, so readiness does not dip
            await self._withdraw(entry, set())
            del self._models[name]
        await self._changed()

    async def _withdraw(self, entry: ModelEntry, on_disk: set[int]) -> None:
        """Take every served version out of service at once; each answers its queue, then unloads."""
        retired = list(entry.served.values())
        entry.served = {}
        await self._changed()
        await self._retire(entry, retired, on_disk)

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    def totals(self) -> tuple[int, int]:
        """Requests answered (succeeded, failed) by the versions serving now."""
        served = [s for e in self._models.values() for s in e.served.values()]
        return sum(s.stats.success.count for s in served), sum(s.stats.fail.count for s in served)

    async def close(self) -> None:
        """Answer everything queued and running in every model, then unload them all."""
        for entry in list(self._models.values()):
            await self._withdraw(entry, set(entry.states))
