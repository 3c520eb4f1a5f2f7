"""config.pbtxt -> a validated ModelSpec, built once at load time so requests do no config work."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from torchwire.client import _codec
from torchwire.client._proto import model_config_pb2 as mc

from ..core.errors import ConfigError

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.pt"
PLATFORM = "pytorch_libtorch"
BACKEND = "pytorch"
# The platforms served, each with its default model file: TorchScript; Triton's AOTInductor package;
# and torchwire's own name for an ExportedProgram (torch.export.save), which Triton has no platform for.
PLATFORMS = {PLATFORM: DEFAULT_MODEL_FILE, "torch_aoti": "model.pt2", "torch_export": "model.pt2"}

# Datatypes a TorchScript model can take or return: the client's table (the one table of v2
# datatypes) without the unsigned types wider than 8 bits, which torch holds without most kernels.
# BYTES (TYPE_STRING) reaches the model as a List[str]; every other one is a tensor.
SUPPORTED = frozenset(_codec.DATATYPES) - {"UINT16", "UINT32", "UINT64"}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str  # the v2 wire name, e.g. "FP32"
    dims: tuple[int, ...]  # without the batch dimension; -1 matches any size
    reshape: tuple[int, ...] | None  # the shape forward() sees instead of dims, if the config says so
    # Worked out once so requests compare tuples instead of looping: elements of one row (None if
    # any dimension is variable).
    row_elements: int | None = field(init=False)

    def __post_init__(self) -> None:
        fixed = all(d > 0 for d in self.dims)
        object.__setattr__(self, "row_elements", math.prod(self.dims) if fixed else None)

    def matches(self, shape: tuple[int, ...]) -> bool:
        if self.row_elements is not None:
            return shape == self.dims
        return len(shape) == len(self.dims) and all(
            d in (-1, s) for d, s in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    max_queue_size: int = 0  # 0: unbounded
    default_timeout_s: float | None = None
    allow_timeout_override: bool = False
    reject_on_timeout: bool = True  # timeout_action REJECT; DELAY: served after those still in time

    @classmethod
    def from_config(cls, policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return cls(
            max_queue_size=policy.max_queue_size,
            default_timeout_s=(policy.default_timeout_microseconds / 1e6) or None,
            allow_timeout_override=policy.allow_timeout_override,
            reject_on_timeout=policy.timeout_action != mc.ModelQueuePolicy.DELAY,
        )


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...]
    priority_levels: int = 1  # levels 1..N, 1 served first
    default_priority: int = 1
    queues: tuple[QueuePolicy, ...] = (QueuePolicy(),)  # one per level, index level - 1

    def queue(self, priority: int) -> QueuePolicy:
        return self.queues[priority - 1]


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Triton's version_policy: which version folders are served."""

    kind: str = "latest"  # latest | all | specific
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, found: Sequence[int]) -> tuple[int, ...]:
        ordered = sorted(found)
        if self.kind == "all":
            return tuple(ordered)
        if self.kind == "specific":
            return tuple(v for v in ordered if v in self.versions)
        return tuple(ordered[-self.count :])


@dataclass(frozen=True, slots=True)
class WarmupInput:
    datatype: str
    dims: tuple[int, ...]
    random: bool  # random_data; otherwise zero_data


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One model_warmup entry: `count` forward passes of `batch_size` rows before the model serves."""

    name: str
    batch_size: int
    count: int
    inputs: dict[str, WarmupInput]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    config: mc.ModelConfig
    max_batch_size: int  # 0: the model takes no batch dimension
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingPolicy | None  # None: every request runs alone
    instances: int
    intra_op_threads: int  # 0: decided by the server's settings
    optimize: bool  # OPTIMIZE_FOR_INFERENCE: torch.jit.optimize_for_inference at load
    platform: str  # one of PLATFORMS: how the runtime loads the model file
    version_policy: VersionPolicy
    warmup: tuple[WarmupSample, ...]  # empty: the default warmup (see runtime.warmup)
    model_file: str
    input_index: dict[str, int] = field(init=False)
    output_index: dict[str, int] = field(init=False)
    all_outputs: tuple[int, ...] = field(init=False)
    # BYTES tensors take their own codec branch, so numeric ones pay nothing for them.
    bytes_inputs: tuple[int, ...] = field(init=False)
    bytes_outputs: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "bytes_inputs", tuple(i for i, t in enumerate(self.inputs) if t.datatype == "BYTES")
        )
        object.__setattr__(
            self, "bytes_outputs", frozenset(i for i, t in enumerate(self.outputs) if t.datatype == "BYTES")
        )
        object.__setattr__(self, "all_outputs", tuple(range(len(self.outputs))))
        object.__setattr__(self, "input_index", {t.name: i for i, t in enumerate(self.inputs)})
        object.__setattr__(self, "output_index", {t.name: i for i, t in enumerate(self.outputs)})

    def threads_per_instance(self, torch_threads: int, cores: int) -> int:
        """Intra-op threads for each instance: the model's INTRA_OP_THREAD_COUNT, else the server's
        --torch-threads, else the cores shared among the instances (no oversubscription)."""
        return self.intra_op_threads or torch_threads or max(1, cores // self.instances)

    def wire_shape(self, tensor: TensorSpec) -> list[int]:
        """The shape metadata reports: dims with -1 in front when the model is batched."""
        return ([-1] if self.max_batch_size > 0 else []) + list(tensor.dims)


def wire_datatype(data_type: int) -> str:
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")  # type: ignore[arg-type]
    return "BYTES" if name == "STRING" else name


def read_config(model_dir: Path) -> mc.ModelConfig:
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (every model needs a {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{path}: {exc}{_enum_hint(str(exc))}") from exc


_UNKNOWN_ENUM_VALUE = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def _enum_hint(message: str) -> str:
    """Triton's enum values carry a prefix (TYPE_FP32, KIND_CPU) that the v2 wire names (FP32) lack."""
    found = _UNKNOWN_ENUM_VALUE.search(message)
    if found is None:
        return ""
    try:
        enum = mc.DESCRIPTOR.pool.FindEnumTypeByName(found.group(1))
    except KeyError:
        return ""
    given = found.group(2).upper()
    names = [value.name for value in enum.values]
    matches = [name for name in names if name == given or name.endswith("_" + given)]
    if matches:
        return f" (did you mean {' or '.join(matches)}?)"
    return f" (its values: {', '.join(names)})"


def _one_list(dims: list[int], batched: bool) -> bool:
    """Whether a BYTES tensor is one flat list: one string per row in a batched model, else 1-D
    (Triton's PyTorch backend has the same rule)."""
    return all(d == 1 for d in dims) or (not batched and len(dims) == 1)


def _tensor(
    kind: str,
    index: int,
    name: str,
    data_type: int,
    dims: list[int],
    reshape: list[int] | None,
    where: Path,
    batched: bool,
) -> TensorSpec:
    label = f"{where}: {kind}[{index}]"
    if not name:
        raise ConfigError(f"{label}: field 'name' is empty")
    datatype = wire_datatype(data_type)
    if datatype not in SUPPORTED:
        raise ConfigError(
            f"{label} '{name}': field 'data_type' {mc.DataType.Name(data_type)} "  # type: ignore[arg-type]
            f"is not supported for TorchScript (supported: {', '.join(sorted(SUPPORTED))})"
        )
    if any(d < -1 or d == 0 for d in dims):
        raise ConfigError(f"{label} '{name}': field 'dims' {dims} must be positive or -1")
    if datatype == "BYTES" and not _one_list(dims, batched):
        raise ConfigError(
            f"{label} '{name}': a BYTES tensor reaches forward() as one List[str], so field 'dims' {dims} "
            + ("must be [1] (one string per row of the batch)" if batched else "must have one dimension")
        )
    return TensorSpec(name, datatype, tuple(dims), tuple(reshape) if reshape is not None else None)


def build_spec(model_dir: Path, config: mc.ModelConfig) -> ModelSpec:
    """Validate a parsed config against what torchwire serves, filling Triton's defaults."""
    where = model_dir / CONFIG_FILE
    name = model_dir.name
    if config.name and config.name != name:
        raise ConfigError(f"{where}: field 'name' is '{config.name}' but the model folder is '{name}'")
    if config.platform and config.platform not in PLATFORMS:
        raise ConfigError(
            f"{where}: field 'platform' is '{config.platform}', torchwire serves "
            f"{', '.join(map(repr, PLATFORMS))}"
        )
    # Triton's rule: backend "pytorch" with a .pt2 model file is an AOTInductor package.
    platform = config.platform or (
        "torch_aoti" if config.default_model_filename.endswith(".pt2") else PLATFORM
    )
    if config.backend and config.backend != BACKEND:
        raise ConfigError(f"{where}: field 'backend' is '{config.backend}', torchwire serves '{BACKEND}'")
    if config.max_batch_size < 0:
        raise ConfigError(f"{where}: field 'max_batch_size' must be >= 0, got {config.max_batch_size}")
    if not config.input:
        raise ConfigError(f"{where}: field 'input' is empty (list the tensors forward() takes)")
    if not config.output:
        raise ConfigError(f"{where}: field 'output' is empty (list the tensors forward() returns)")
    inputs = tuple(
        _tensor(
            "input",
            i,
            t.name,
            t.data_type,
            list(t.dims),
            list(t.reshape.shape) if t.HasField("reshape") else None,
            where,
            config.max_batch_size > 0,
        )
        for i, t in enumerate(config.input)
    )
    outputs = tuple(
        _tensor("output", i, t.name, t.data_type, list(t.dims), None, where, config.max_batch_size > 0)
        for i, t in enumerate(config.output)
    )
    for kind, tensors in (("input", inputs), ("output", outputs)):
        seen: set[str] = set()
        for t in tensors:
            if t.name in seen:
                raise ConfigError(f"{where}: {kind} '{t.name}' is listed twice")
            seen.add(t.name)

    batching = None
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            raise ConfigError(f"{where}: field 'dynamic_batching' needs 'max_batch_size' > 0")
        db = config.dynamic_batching
        too_big = [p for p in db.preferred_batch_size if not 0 < p <= config.max_batch_size]
        if too_big:
            raise ConfigError(
                f"{where}: field 'dynamic_batching.preferred_batch_size' {too_big} must be within "
                f"1..max_batch_size ({config.max_batch_size})"
            )
        batching = _batching_policy(db, where)
    if config.HasField("sequence_batching") or config.HasField("ensemble_scheduling"):
        raise ConfigError(f"{where}: sequence_batching and ensemble_scheduling are not supported")

    instances = sum(group.count or 1 for group in config.instance_group) or 1
    if any(
        group.kind not in (mc.ModelInstanceGroup.KIND_AUTO, mc.ModelInstanceGroup.KIND_CPU)
        for group in config.instance_group
    ):
        raise ConfigError(f"{where}: field 'instance_group.kind' must be KIND_CPU (no GPU here)")

    threads = _int_parameter(config, "INTRA_OP_THREAD_COUNT", where)
    optimize = _bool_parameter(config, "OPTIMIZE_FOR_INFERENCE", where)

    served = mc.ModelConfig()
    served.CopyFrom(config)
    served.name = name
    served.platform = platform
    served.backend = BACKEND
    return ModelSpec(
        name=name,
        config=served,
        max_batch_size=config.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        batching=batching,
        instances=instances,
        intra_op_threads=threads,
        optimize=optimize,
        platform=platform,
        version_policy=_version_policy(config, where),
        warmup=tuple(_warmup(sample, inputs, config.max_batch_size, where) for sample in config.model_warmup),
        model_file=config.default_model_filename or PLATFORMS[platform],
    )


def _batching_policy(db: mc.ModelDynamicBatching, where: Path) -> BatchingPolicy:
    levels = max(1, db.priority_levels)
    default = db.default_priority_level or (levels + 1) // 2
    if not 1 <= default <= levels:
        raise ConfigError(
            f"{where}: field 'dynamic_batching.default_priority_level' {default} must be within 1..{levels}"
        )
    for level in db.priority_queue_policy:
        if not 1 <= level <= levels:
            raise ConfigError(
                f"{where}: field 'dynamic_batching.priority_queue_policy' names level {level}, "
                f"outside 1..{levels}"
            )
    base = QueuePolicy.from_config(db.default_queue_policy)
    queues = tuple(
        QueuePolicy.from_config(db.priority_queue_policy[level])
        if level in db.priority_queue_policy
        else base
        for level in range(1, levels + 1)
    )
    return BatchingPolicy(
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        preferred_batch_sizes=tuple(sorted(db.preferred_batch_size)),
        priority_levels=levels,
        default_priority=default,
        queues=queues,
    )


def _version_policy(config: mc.ModelConfig, where: Path) -> VersionPolicy:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        if any(v <= 0 for v in policy.specific.versions):
            raise ConfigError(f"{where}: field 'version_policy.specific.versions' must be positive integers")
        return VersionPolicy("specific", versions=tuple(policy.specific.versions))
    if choice == "latest":
        return VersionPolicy("latest", count=max(1, policy.latest.num_versions))
    return VersionPolicy()


def _warmup(
    sample: mc.ModelWarmup, inputs: tuple[TensorSpec, ...], max_batch_size: int, where: Path
) -> WarmupSample:
    label = f"{where}: model_warmup '{sample.name}'"
    names = {t.name for t in inputs}
    if set(sample.inputs) != names:
        raise ConfigError(f"{label}: field 'inputs' must name exactly the model's inputs {sorted(names)}")
    if max_batch_size > 0 and not 0 < (sample.batch_size or 1) <= max_batch_size:
        raise ConfigError(f"{label}: field 'batch_size' must be within 1..{max_batch_size}")
    converted: dict[str, WarmupInput] = {}
    for name, given in sample.inputs.items():
        if given.WhichOneof("input_data_type") == "input_data_file":
            raise ConfigError(
                f"{label}: input '{name}': input_data_file is not supported; use zero_data or random_data"
            )
        if any(d <= 0 for d in given.dims):
            raise ConfigError(f"{label}: input '{name}': field 'dims' must be positive")
        converted[name] = WarmupInput(wire_datatype(given.data_type), tuple(given.dims), given.random_data)
    return WarmupSample(sample.name, sample.batch_size or 1, sample.count or 1, converted)


def _int_parameter(config: mc.ModelConfig, key: str, where: Path) -> int:
    """A config `parameters` entry holding a non-negative integer (Triton's PyTorch backend keys)."""
    if key not in config.parameters:
        return 0
    text = config.parameters[key].string_value
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{where}: parameters '{key}' must be a non-negative integer, got '{text}'")
    return int(text)


def _bool_parameter(config: mc.ModelConfig, key: str, where: Path) -> bool:
    """A config `parameters` entry holding "true" or "false" (any case); absent means false."""
    if key not in config.parameters:
        return False
    text = config.parameters[key].string_value
    if text.lower() not in ("true", "false"):
        raise ConfigError(f"{where}: parameters '{key}' must be \"true\" or \"false\", got '{text}'")
    return text.lower() == "true"


def load_spec(model_dir: Path) -> ModelSpec:
    return build_spec(model_dir, read_config(model_dir))
