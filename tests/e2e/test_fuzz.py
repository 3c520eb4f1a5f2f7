"""Property-based fuzzing of ModelInfer through a real server (issue 7, point 5).

Hypothesis generates ModelInferRequests around a small repository: mostly well-formed requests with a
few faults mixed in (model names and versions, datatypes, shapes, byte lengths, input and output
names, raw/typed contents, parameters of every kind, ids), plus garbage and mutated bytes as the whole
message. The generator records each fault it plants, so every answer is judged:

- a request without faults is answered OK (or DEADLINE_EXCEEDED when it set a `timeout`), and the
  outputs are right: the identity models return the input bytes, `simple` returns sum and difference;
- a request with faults gets one of the statuses those faults call for, never OK;
- every error is a clean status with a message: never UNKNOWN, never the generic "internal server
  error" (an unexpected exception reached the boundary), INTERNAL only for a model's own error;
- nothing hangs: every call has a 30 s deadline, and the server's DEADLINE_EXCEEDED must come early.

Examples are derandomized, so CI runs the same requests every time.
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from support.modelgen import Identity, identity_repository, single_io_config, write_model
from support.serving import RunningServer, running_server
from torchwire.client._proto import grpc_service_pb2 as pb
from torchwire.client._proto import grpc_service_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 30.0
HANG_S = 25.0  # an answer this late is a hang, whatever its status
METHOD = "/inference.GRPCInferenceService/ModelInfer"
GENERIC_INTERNAL = "internal server error"
Code = grpc.StatusCode
CLEAN_CODES = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.UNAVAILABLE,
    Code.UNIMPLEMENTED,
    Code.RESOURCE_EXHAUSTED,
    Code.DEADLINE_EXCEEDED,
    Code.INTERNAL,  # only with a model's own message, see check_clean
}

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
EXAMPLES = {"single": 2500, "concurrent": 200, "garbage": 800, "lookup": 150}
MIN_INFER_REQUESTS = 2000
SENT: Counter[str] = Counter()  # calls made, by test


# --- The repository, as the test knows it ----------------------------------------------------------

WIRE: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "<u1",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "BF16": "<u2",
    "FP32": "<f4",
    "FP64": "<f8",
}
# The typed-contents field of each datatype; FP16 and BF16 travel only as raw bytes.
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
INT_RANGE: dict[str, tuple[int, int]] = {
    "UINT8": (0, 2**8 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {  # each field's whole wire range
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
FIELD_LIMITS = {
    "int_contents": (-(2**31), 2**31 - 1),
    "int64_contents": (-(2**63), 2**63 - 1),
    "uint_contents": (0, 2**32 - 1),
}
CONTENT_FIELDS = sorted(FIELD_VALUES)


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 is variable


@dataclass(frozen=True)
class Model:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    kind: str  # "identity", "simple" (sum and difference) or "broken" (fails to load)
    priority_levels: int = 0  # 0: no dynamic batching

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)


def _identity(name: str, datatype: str, dims: tuple[int, ...], max_batch_size: int, **kw: Any) -> Model:
    return Model(
        name,
        (Tensor("INPUT__0", datatype, dims),),
        (Tensor("OUTPUT__0", datatype, dims),),
        max_batch_size,
        kw.pop("kind", "identity"),
        **kw,
    )


IDENTITY = {f"ident_{d.lower()}": _identity(f"ident_{d.lower()}", d, (4,), 8) for d in WIRE}
MODELS: dict[str, Model] = {
    **IDENTITY,
    "simple": Model(
        "simple",
        (Tensor("INPUT0", "INT32", (16,)), Tensor("INPUT1", "INT32", (16,))),
        (Tensor("OUTPUT0", "INT32", (16,)), Tensor("OUTPUT1", "INT32", (16,))),
        8,
        "simple",
    ),
    # max_batch_size 0: the request's shape is the tensor's whole shape, no batch dimension.
    "flat": _identity("flat", "FP32", (-1, -1), 0),
    # dynamic batching with 3 priority levels; batch-mates must share their non-batch shape.
    "dyn": _identity("dyn", "INT64", (-1,), 8, priority_levels=3),
    "broken": _identity("broken", "FP32", (4,), 8, kind="broken"),
}
SERVED = [m for m in MODELS if MODELS[m].kind != "broken"]
DYN_CONFIG = (
    "dynamic_batching { max_queue_delay_microseconds: 500 priority_levels: 3 default_priority_level: 2 "
    "default_queue_policy { allow_timeout_override: true default_timeout_microseconds: 20000000 } }"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo: Path = tmp_path_factory.mktemp("fuzz-repo")
    assert sorted(identity_repository(repo)) == sorted(IDENTITY)
    shutil.copytree(Path(__file__).parents[2] / "models" / "simple", repo / "simple")
    write_model(repo, "flat", Identity(), single_io_config("flat", "FP32", [-1, -1], 0))
    write_model(repo, "dyn", Identity(), single_io_config("dyn", "INT64", [-1], 8, DYN_CONFIG))
    write_model(repo, "broken", None, single_io_config("broken", "FP32", [4], 8))  # no model.pt
    with running_server(repo, readiness="any") as running:  # "broken" must not make it unready
        yield running


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as shared:
        yield shared


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


# --- Generated requests, with the faults the generator planted -------------------------------------


@dataclass
class Case:
    request: pb.ModelInferRequest
    faults: list[tuple[str, Code]] = field(default_factory=list)  # each must be refused with its code
    lenient: list[str] = field(default_factory=list)  # may be accepted or refused (cleanly)
    may_expire: bool = False  # a valid `timeout` parameter: DEADLINE_EXCEEDED is fair

    def fault(self, what: str, code: Code = Code.INVALID_ARGUMENT) -> None:
        self.faults.append((what, code))

    def __repr__(self) -> str:
        message = text_format.MessageToString(self.request, as_one_line=True, as_utf8=True)
        faults = [f"{what} -> {code.name}" for what, code in self.faults]
        return (
            f"Case(faults={faults}, lenient={self.lenient}, may_expire={self.may_expire}, "
            f"request=<{message}>)"
        )


def chance(draw: st.DrawFn, percent: int) -> bool:
    """True with about `percent`% probability; shrinks towards False (no fault)."""
    return draw(st.integers(0, 99)) >= 100 - percent


# The kinds of fault the generator plants. A request gets none (40%), exactly one kind (50%: so it
# reaches the deeper checks instead of stopping at the first), or any mix of them (10%).
FAULT_KINDS = (
    "model",
    "version",
    "missing",
    "duplicate",
    "unknown_input",
    "datatype",
    "shape",
    "empty_huge",  # no elements, yet a huge dimension: valid where the config's dims allow it
    "tensor_params",
    "raw_length",
    "bool_bytes",
    "mixed",
    "raw_count",
    "typed_field",
    "typed_count",
    "typed_range",
    "typed_raw_only",
    "outputs",
    "params",
)
RAW_KINDS = {"raw_length", "bool_bytes", "mixed", "raw_count"}
TYPED_KINDS = {"typed_field", "typed_count", "typed_range", "typed_raw_only"}


class Planner:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        mode = draw(st.integers(0, 9))
        self.free = mode == 9
        self.kind = draw(st.sampled_from(FAULT_KINDS)) if 4 <= mode <= 8 else None

    def __call__(self, kind: str, percent: int = 8) -> bool:
        """Whether to plant a fault of this kind here."""
        return chance(self.draw, percent) if self.free else kind == self.kind


TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
NAME_EDGES = [
    "",
    " ",
    "simple ",
    "SIMPLE",
    "simple\x00",
    "simple/1",
    "../simple",
    "ident_fp32\n",
    "é",
    "a" * 5000,
]
VERSION_EDGES = [
    "0",
    "2",
    "-1",
    "+1",
    "1.0",
    " 1",
    "1 ",
    "01",
    "0x1",
    "\uff11",  # fullwidth 1
    "\u0661",  # arabic-indic 1
    "\u00b9",  # superscript 1
    "\u00b2",  # superscript 2
    "1" * 30,
    "9" * 5000,
]
DATATYPE_EDGES = [
    "",
    "fp32",
    "FP32 ",
    "TYPE_FP32",
    "FLOAT",
    "UINT16",
    "UINT32",
    "UINT64",
    "BYTES",
    "STRING",
    "FP8",
]
HUGE_DIMS = [-1, -(2**63), 2**31, 2**32, 2**40, 2**62, 2**63 - 1]
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
# Model names weighted towards the models with something special: variable dims, batching, 2 inputs.
WEIGHTED_MODELS = [*SERVED, *(["flat", "dyn", "simple"] * 3)]
# The models where a kind of fault means most; the planner picks them for it most of the time.
MODELS_FOR_KIND = {
    "empty_huge": ["flat"],
    "typed_range": ["ident_int8", "ident_int16", "ident_uint8"],
    "bool_bytes": ["ident_bool"],
    "typed_raw_only": ["ident_fp16", "ident_bf16"],
}
SHARED_MEMORY_KEYS = ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"]
SCHEDULING_KEYS = ["priority", "timeout", "sequence_id", "sequence_start", "sequence_end"]
BENIGN_KEYS = [
    "binary_data_output",
    "binary_data",
    "binary_data_size",
    "headers",
    "triton_enable_empty_final_response",
]
OTHER_KEYS = TEXT.filter(lambda k: k not in {*SHARED_MEMORY_KEYS, *SCHEDULING_KEYS, "classification"})

any_parameter: st.SearchStrategy[pb.InferParameter] = st.one_of(
    st.integers(-2, 5).map(lambda v: pb.InferParameter(int64_param=v)),
    st.integers(0, 5).map(lambda v: pb.InferParameter(uint64_param=v)),
    INT64.map(lambda v: pb.InferParameter(int64_param=v)),
    UINT64.map(lambda v: pb.InferParameter(uint64_param=v)),
    st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
    TEXT.map(lambda v: pb.InferParameter(string_param=v)),
    st.floats().map(lambda v: pb.InferParameter(double_param=v)),
    st.just(pb.InferParameter()),  # no value at all
)


def integer_parameter(values: st.SearchStrategy[int]) -> st.SearchStrategy[pb.InferParameter]:
    return values.map(lambda v: pb.InferParameter(int64_param=v)) | values.filter(lambda v: v >= 0).map(
        lambda v: pb.InferParameter(uint64_param=v)
    )


def integer_of(param: pb.InferParameter) -> int | None:
    kind = param.WhichOneof("parameter_choice")
    return cast(int, getattr(param, kind)) if kind in ("int64_param", "uint64_param") else None


def draw_benign(draw: st.DrawFn, percent: int) -> dict[str, pb.InferParameter]:
    """Parameters a server ignores (or honours without changing the answer), any value."""
    if not chance(draw, percent):
        return {}
    keys = draw(st.lists(st.sampled_from(BENIGN_KEYS) | OTHER_KEYS, max_size=3, unique=True))
    return {key: draw(any_parameter) for key in keys}


def draw_request_parameters(draw: st.DrawFn, plan: Planner, model: Model) -> dict[str, pb.InferParameter]:
    params = draw_benign(draw, 20)
    if plan("params"):  # anything at all under the scheduling and shared-memory keys: judged below
        for key in draw(
            st.lists(st.sampled_from(SCHEDULING_KEYS + SHARED_MEMORY_KEYS), min_size=1, max_size=3)
        ):
            params[key] = draw(any_parameter)
    else:  # valid scheduling parameters
        if chance(draw, 15):
            # Any level, the model's or beyond them (which means its default level, as in Triton).
            levels = st.integers(0, model.priority_levels + 2) | st.integers(0, 2**63 - 1)
            params["priority"] = draw(integer_parameter(levels))
        if chance(draw, 15):
            params["timeout"] = draw(integer_parameter(st.integers(0, 2**63 - 1)))
    return params


def judge_request_parameters(case: Case, model: Model) -> None:
    for key, param in case.request.parameters.items():
        value = integer_of(param)
        if key in ("priority", "timeout"):
            if value is None or value < 0:
                case.fault(f"parameter {key!r} is not a non-negative integer")
            elif key == "timeout" and value > 0:
                case.may_expire = True
        elif key == "sequence_id":
            if value or param.string_param:
                case.fault("sequence_id set (no sequence batching)", Code.UNIMPLEMENTED)
            else:
                case.lenient.append("sequence_id without a usable value")
        elif key in ("sequence_start", "sequence_end") or key in SHARED_MEMORY_KEYS:
            case.lenient.append(f"request parameter {key!r}")


def draw_shape(draw: st.DrawFn, plan: Planner, model: Model, template: Tensor, rows: int) -> list[int]:
    """A valid shape for the template tensor, unless the plan says otherwise."""
    shape = [rows] if model.max_batch_size else []
    shape += [d if d != -1 else draw(st.integers(0, 4)) for d in template.dims]
    if plan("empty_huge") and len(shape) > 1:
        body = [i for i in range(len(shape)) if i >= len(shape) - len(template.dims)]
        zero, huge = draw(st.permutations(body if len(body) > 1 else range(len(shape))))[:2]
        shape[zero], shape[huge] = 0, draw(st.sampled_from([2**31, 2**40, 2**61, 2**62, 2**63 - 1]))
    if not plan("shape", 15):
        return shape
    how = draw(st.integers(0, 4))
    if how == 0 and shape:  # one dimension replaced by an edge value or any int64
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(HUGE_DIMS) | INT64)
    elif how == 1:  # many dimensions
        shape += draw(st.lists(st.integers(0, 3) | st.sampled_from(HUGE_DIMS), min_size=1, max_size=40))
    elif how == 2:  # fewer dimensions
        shape = shape[: draw(st.integers(0, max(0, len(shape) - 1)))]
    elif how == 3 and shape:  # rows out of range, or a zero
        shape[0] = draw(st.sampled_from([0, -1, model.max_batch_size + 1, 2**40]))
    else:  # anything at all
        shape = draw(st.lists(INT64, max_size=6))
    return shape


def shape_fault(model: Model, template: Tensor, shape: Sequence[int]) -> str | None:
    body = list(shape[1:]) if model.max_batch_size else list(shape)
    if model.max_batch_size and (not shape or not 1 <= shape[0] <= model.max_batch_size):
        return f"shape {list(shape)}: rows not within 1..{model.max_batch_size}"
    if len(body) != len(template.dims) or any(s < 0 for s in body):
        return f"shape {list(shape)} against dims {list(template.dims)}"
    if any(d not in (-1, s) for d, s in zip(template.dims, body, strict=True)):
        return f"shape {list(shape)} against dims {list(template.dims)}"
    return None


def element_count(shape: Sequence[int]) -> int | None:
    return math.prod(shape) if all(s >= 0 for s in shape) else None


def draw_raw(draw: st.DrawFn, plan: Planner, case: Case, datatype: str, count: int | None) -> bytes:
    itemsize = np.dtype(WIRE[datatype]).itemsize
    expected = count * itemsize if count is not None else None
    if expected is None or expected > 512 or plan("raw_length"):
        data = draw(st.binary(max_size=40))
    elif datatype == "BOOL" and not plan("bool_bytes", 10):
        data = bytes(draw(st.lists(st.integers(0, 1), min_size=expected, max_size=expected)))
    else:
        data = draw(st.binary(min_size=expected, max_size=expected))
    if len(data) != expected:
        case.fault(f"{len(data)} raw bytes, expected {expected} for {count} elements of {datatype}")
    elif datatype == "BOOL" and any(b > 1 for b in data):
        case.lenient.append("raw BOOL bytes other than 0 and 1")
    return data


def draw_contents(
    draw: st.DrawFn, plan: Planner, case: Case, datatype: str, count: int | None
) -> pb.InferTensorContents:
    right = TYPED_FIELD.get(datatype)
    name = right if right is not None and not plan("typed_field") else draw(st.sampled_from(CONTENT_FIELDS))
    if count is not None and count <= 128 and not plan("typed_count"):
        size = count
    else:
        size = draw(st.integers(0, 6))
    values: list[Any]
    if name == right and datatype in INT_RANGE:  # in range, or with some just outside or far out
        (low, high), (field_low, field_high) = INT_RANGE[datatype], FIELD_LIMITS[name]
        edges = (low - 1, high + 1, field_low, field_high)
        outside = [v for v in edges if field_low <= v <= field_high and not low <= v <= high]
        value = st.integers(low, high)
        if outside and plan("typed_range", 15):
            value = st.sampled_from(outside) | st.integers(field_low, field_high) | value
        values = draw(st.lists(value, min_size=size, max_size=size))
    else:
        values = draw(st.lists(FIELD_VALUES[name], min_size=size, max_size=size))
    contents = pb.InferTensorContents()
    getattr(contents, name).extend(values)
    if right is None:
        case.fault(f"typed contents for {datatype}, which travels only as raw bytes")
    elif values and name != right:
        case.fault(f"{datatype} values in contents.{name}, expected contents.{right}")
    elif len(values) != count:
        case.fault(f"{len(values)} values in contents.{name}, expected {count}")
    elif datatype in INT_RANGE and not all(
        INT_RANGE[datatype][0] <= v <= INT_RANGE[datatype][1] for v in values
    ):
        case.fault(f"contents.{name} values outside the range of {datatype}")
    return contents


@st.composite
def infer_cases(draw: st.DrawFn, names: st.SearchStrategy[str] | None = None) -> Case:
    plan = Planner(draw)
    if names is not None:
        model_name = draw(names)
    elif plan("model"):
        model_name = draw(st.just("broken") | st.sampled_from(NAME_EDGES) | TEXT)
    elif plan.kind in MODELS_FOR_KIND and not chance(draw, 30):
        model_name = draw(st.sampled_from(MODELS_FOR_KIND[plan.kind]))
    else:
        model_name = draw(st.sampled_from(WEIGHTED_MODELS))
    version = draw(st.sampled_from(VERSION_EDGES) | TEXT if plan("version") else st.sampled_from(["", "1"]))
    request = pb.ModelInferRequest(model_name=model_name, model_version=version)
    case = Case(request)
    if chance(draw, 50):
        request.id = draw(TEXT | st.text(st.characters(codec="utf-8"), max_size=200))
    model = MODELS.get(model_name)
    if model is None:
        case.fault(f"unknown model {model_name!r}", Code.NOT_FOUND)
        model = MODELS[draw(st.sampled_from(SERVED))]  # its inputs make a plausible request
    elif model.kind == "broken":
        case.fault("the model failed to load", Code.UNAVAILABLE)
    if version not in ("", "1"):
        if version.isdecimal() and len(version) < 20 and int(version) == 1:
            case.lenient.append(f"version {version!r} spells 1")
        else:
            case.fault(f"unknown version {version!r}", Code.NOT_FOUND)

    # The inputs: the model's own, in any order; one missing, doubled or unknown if so planned.
    inputs: list[tuple[str, Tensor]] = [(t.name, t) for t in draw(st.permutations(model.inputs))]
    if plan("missing"):
        inputs.pop(draw(st.integers(0, len(inputs) - 1)))
    if plan("duplicate"):
        inputs.append(
            inputs[draw(st.integers(0, len(inputs) - 1))] if inputs else ("INPUT__0", model.inputs[0])
        )
    if plan("unknown_input"):
        unknown = draw(st.sampled_from(["", "INPUT__1", "input__0", "OUTPUT__0", "INPUT0 "]) | TEXT)
        inputs.insert(draw(st.integers(0, len(inputs))), (unknown, draw(st.sampled_from(model.inputs))))
    rows = draw(st.integers(1, model.max_batch_size)) if model.max_batch_size else 0
    if plan.kind in RAW_KINDS or any(t.datatype not in TYPED_FIELD for t in model.inputs):
        raw = plan.kind not in TYPED_KINDS
    else:
        raw = plan.kind not in TYPED_KINDS and not chance(draw, 35)
    seen: set[str] = set()
    row_counts: set[int] = set()
    counts: list[tuple[int | None, str]] = []  # element count and datatype of each input
    for name, template in inputs:
        tensor = request.inputs.add(name=name, datatype=template.datatype)
        if model.input(name) is None:
            case.fault(f"unknown input {name!r}")
        elif name in seen:
            case.fault(f"input {name!r} twice")
        seen.add(name)
        if plan("datatype"):
            tensor.datatype = draw(st.sampled_from(list(WIRE) + DATATYPE_EDGES) | TEXT)
            if tensor.datatype != template.datatype:
                case.fault(f"input {name!r}: datatype {tensor.datatype!r}, expected {template.datatype}")
        shape = draw_shape(draw, plan, model, template, rows)
        tensor.shape.extend(shape)
        problem = shape_fault(model, template, shape)
        if problem is not None:
            case.fault(f"input {name!r}: {problem}")
        else:
            if model.max_batch_size:
                row_counts.add(shape[0])
            if max(shape, default=0) > 2**31 - 1:  # no elements, but a server may cap dimensions
                case.lenient.append(f"input {name!r}: shape {shape} has a dimension over 2**31 - 1")
        count = element_count(shape)
        counts.append((count, template.datatype))
        for key, param in draw_benign(draw, 10).items():
            tensor.parameters[key].CopyFrom(param)
        if plan("tensor_params"):
            tensor.parameters[draw(st.sampled_from(SHARED_MEMORY_KEYS))].CopyFrom(draw(any_parameter))
            case.fault(f"input {name!r}: shared memory parameter", Code.UNIMPLEMENTED)
        if raw:
            request.raw_input_contents.append(draw_raw(draw, plan, case, template.datatype, count))
            if plan("mixed", 5):
                tensor.contents.CopyFrom(pb.InferTensorContents(bool_contents=[True]))
                case.fault(f"input {name!r}: typed contents in a request with raw contents")
        else:
            tensor.contents.CopyFrom(draw_contents(draw, plan, case, template.datatype, count))
    if len(row_counts) > 1:
        case.fault(f"inputs disagree on the batch dimension: {sorted(row_counts)}")
    missing = [t.name for t in model.inputs if t.name not in seen]
    if missing:
        case.fault(f"missing inputs {missing}")
    if raw and plan("raw_count", 5):
        if request.raw_input_contents and draw(st.booleans()):
            request.raw_input_contents.pop()
        else:
            request.raw_input_contents.append(draw(st.binary(max_size=8)))
        if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
            case.fault("raw_input_contents and inputs differ in number")
        elif not request.raw_input_contents and any(
            count != 0 or datatype not in TYPED_FIELD for count, datatype in counts
        ):
            case.fault("no raw_input_contents left and no typed contents either")

    # Requested outputs: none (all of them), some of the known ones, unknown names if so planned.
    if chance(draw, 40) or plan("outputs"):
        known = [t.name for t in model.outputs]
        wanted = draw(st.lists(st.sampled_from(known), unique=not plan.free, max_size=len(known) + plan.free))
        if plan("outputs"):
            odd_output = st.sampled_from(["", "OUTPUT__1", "output__0", "INPUT__0", "OUTPUT0 "]) | TEXT
            wanted.insert(draw(st.integers(0, len(wanted))), draw(odd_output))
        for name in wanted:
            output = request.outputs.add(name=name)
            for key, param in draw_benign(draw, 10).items():
                output.parameters[key].CopyFrom(param)
            if plan.free and chance(draw, 10):
                key = draw(st.sampled_from(["classification", *SHARED_MEMORY_KEYS]))
                output.parameters[key].CopyFrom(draw(any_parameter))
                case.lenient.append(f"output parameter {key!r}")
            if name not in known:
                case.fault(f"unknown requested output {name!r}")
        if len(set(wanted)) != len(wanted):
            case.lenient.append("an output requested twice")

    for key, param in draw_request_parameters(draw, plan, model).items():
        request.parameters[key].CopyFrom(param)
    judge_request_parameters(case, model)
    return case


# --- Calls and the properties every answer must have -----------------------------------------------


@dataclass
class Outcome:
    code: Code
    details: str
    response: bytes | pb.ModelInferResponse | None
    elapsed: float


def outcome_of(call: Callable[[], Any], started: float, test: str) -> Outcome:
    SENT[test] += 1
    try:
        response = call()
    except grpc.RpcError as exc:
        failed = cast(grpc.Call, exc)
        return Outcome(failed.code(), failed.details() or "", None, time.monotonic() - started)
    return Outcome(Code.OK, "", response, time.monotonic() - started)


def infer(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, test: str) -> Outcome:
    started = time.monotonic()
    return outcome_of(lambda: stub.ModelInfer(request, timeout=CALL_TIMEOUT_S), started, test)


def check_clean(outcome: Outcome) -> None:
    """An error status a client can act on: a known code and a message that says something."""
    assert outcome.elapsed < HANG_S, f"answered after {outcome.elapsed:.1f} s: a hang"
    assert outcome.code is not Code.UNKNOWN, f"UNKNOWN status: {outcome.details!r}"
    assert outcome.code in CLEAN_CODES, f"unexpected status {outcome.code.name}: {outcome.details!r}"
    assert outcome.details.strip(), f"{outcome.code.name} without a message"
    assert GENERIC_INTERNAL not in outcome.details, (
        f"an unexpected exception reached the boundary: {outcome.code.name} {outcome.details!r}"
    )
    if outcome.code is Code.INTERNAL:  # a model error names the model; these models never raise
        assert outcome.details.startswith("model '"), (
            f"INTERNAL that is not a model error: {outcome.details!r}"
        )


def check_case(case: Case, outcome: Outcome) -> None:
    event(f"{'valid' if not case.faults else 'faulty'} -> {outcome.code.name}")
    if outcome.code is Code.OK:
        assert not case.faults, f"accepted a bad request: {case.faults}"
        assert isinstance(outcome.response, pb.ModelInferResponse)
        check_answer(case.request, outcome.response)
        return
    check_clean(outcome)
    if case.faults:  # RESOURCE_EXHAUSTED: a limit may stop any request before its faults do
        allowed = {code for _, code in case.faults} | {Code.RESOURCE_EXHAUSTED}
        if not case.lenient:
            assert outcome.code in allowed, (
                f"{outcome.code.name} {outcome.details!r}; the request's faults call for "
                f"{sorted(c.name for c in allowed)}: {case.faults}"
            )
    elif not case.lenient:
        assert case.may_expire and outcome.code is Code.DEADLINE_EXCEEDED, (
            f"refused a valid request: {outcome.code.name} {outcome.details!r}"
        )


def input_bytes(request: pb.ModelInferRequest, position: int, datatype: str) -> bytes:
    """The little-endian bytes of one input of an accepted request, as the model must have seen them."""
    if request.raw_input_contents:
        return bytes(request.raw_input_contents[position])
    values = list(getattr(request.inputs[position].contents, TYPED_FIELD[datatype]))
    if datatype in INT_RANGE:
        low, high = INT_RANGE[datatype]
        assert all(low <= v <= high for v in values), f"accepted {datatype} values out of range: {values}"
    return np.array(values, dtype=WIRE[datatype]).tobytes()


def check_answer(request: pb.ModelInferRequest, response: pb.ModelInferResponse) -> None:
    """An OK answer is the model's answer to exactly this request."""
    model = MODELS[request.model_name]
    assert response.model_name == request.model_name
    assert response.model_version == "1"
    assert response.id == request.id
    wanted = [o.name for o in request.outputs] or [t.name for t in model.outputs]
    assert [o.name for o in response.outputs] == wanted
    assert len(response.raw_output_contents) == len(response.outputs)
    given_inputs = {
        t.name: (list(t.shape), input_bytes(request, i, t.datatype)) for i, t in enumerate(request.inputs)
    }
    expected: dict[str, tuple[list[int], bytes]] = {}
    if model.kind == "identity":
        expected["OUTPUT__0"] = given_inputs["INPUT__0"]
    else:
        (shape, a_bytes), (_, b_bytes) = given_inputs["INPUT0"], given_inputs["INPUT1"]
        a, b = np.frombuffer(a_bytes, "<i4"), np.frombuffer(b_bytes, "<i4")
        expected["OUTPUT0"] = (shape, (a + b).astype("<i4").tobytes())
        expected["OUTPUT1"] = (shape, (a - b).astype("<i4").tobytes())
    for output, data in zip(response.outputs, response.raw_output_contents, strict=True):
        spec = next(t for t in model.outputs if t.name == output.name)
        shape, want = expected[output.name]
        assert output.datatype == spec.datatype, output
        assert list(output.shape) == shape, (output.name, list(output.shape), shape)
        if spec.datatype == "BOOL":  # any non-zero byte is true; it may come back as 1
            assert [x != 0 for x in data] == [x != 0 for x in want], (output.name, data, want)
        else:
            assert data == want, (output.name, data[:64], want[:64])


# --- The fuzz tests ---------------------------------------------------------------------------------


@settings(FUZZ, max_examples=EXAMPLES["single"])
@given(case=infer_cases())
def test_any_request_gets_a_right_answer_or_a_clean_status(
    stub: pb_grpc.GRPCInferenceServiceStub, case: Case
) -> None:
    check_case(case, infer(stub, case.request, "single"))


BATCHING_MODELS = st.sampled_from(["dyn", "dyn", "dyn", "dyn", "ident_int32", "simple", "flat"])


@settings(FUZZ, max_examples=EXAMPLES["concurrent"])
@given(cases=st.lists(infer_cases(BATCHING_MODELS), min_size=2, max_size=8))
def test_concurrent_requests_do_not_affect_each_other(
    stub: pb_grpc.GRPCInferenceServiceStub, cases: list[Case]
) -> None:
    """Good and bad requests at once, most to the batching model: each gets its own right answer."""
    started = time.monotonic()
    calls = [stub.ModelInfer.future(case.request, timeout=CALL_TIMEOUT_S) for case in cases]
    for case, call in zip(cases, calls, strict=True):
        check_case(case, outcome_of(call.result, started, "concurrent"))


def _good_messages() -> list[bytes]:
    """Valid serialized requests to every served model, raw and typed: seeds for mutation."""
    messages = []
    for name in SERVED:
        model = MODELS[name]
        for raw in (True, False):
            if not raw and any(t.datatype not in TYPED_FIELD for t in model.inputs):
                continue
            request = pb.ModelInferRequest(model_name=name, id="seed")
            request.parameters["priority"].int64_param = 1
            for t in model.inputs:
                shape = ([2] if model.max_batch_size else []) + [d if d != -1 else 3 for d in t.dims]
                count = math.prod(shape)
                tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=shape)
                if raw:
                    request.raw_input_contents.append(np.ones(count, WIRE[t.datatype]).tobytes())
                else:
                    getattr(tensor.contents, TYPED_FIELD[t.datatype]).extend([1] * count)
            request.outputs.add(name=model.outputs[0].name)
            messages.append(request.SerializeToString())
    return messages


GOOD_MESSAGES = _good_messages()


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(GOOD_MESSAGES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.integers(0, 3))
        if how == 0 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif how == 1:
            del data[at:]
        elif how == 2:
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        else:
            data[at : at + draw(st.integers(1, 8))] = b""
    return bytes(data)


@settings(FUZZ, max_examples=EXAMPLES["garbage"])
@given(data=st.binary(max_size=300) | mutated_messages())
def test_garbage_bytes_as_the_whole_message(channel: grpc.Channel, data: bytes) -> None:
    """Random bytes, and valid requests with bytes flipped, cut, inserted or deleted, sent as is:
    undecodable ones get a clean status, decodable ones are judged like any request."""
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    outcome = outcome_of(lambda: call(data, timeout=CALL_TIMEOUT_S), started, "garbage")
    try:
        request: pb.ModelInferRequest | None = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        request = None
    if outcome.code is not Code.OK:
        check_clean(outcome)
        return
    assert request is not None, "accepted bytes that are not a ModelInferRequest"
    assert isinstance(outcome.response, bytes)
    check_answer(request, pb.ModelInferResponse.FromString(outcome.response))


@settings(FUZZ, max_examples=EXAMPLES["lookup"])
@given(
    name=st.sampled_from([*MODELS, *NAME_EDGES]) | TEXT,
    version=st.sampled_from(["", "1", *VERSION_EDGES]) | TEXT,
)
def test_model_lookups_by_any_name_and_version(
    stub: pb_grpc.GRPCInferenceServiceStub, name: str, version: str
) -> None:
    """ModelReady, ModelMetadata, ModelConfig and ModelStatistics take the same names and versions."""
    served = name in SERVED and version in ("", "1")
    started = time.monotonic()
    ready = outcome_of(
        lambda: stub.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=CALL_TIMEOUT_S),
        started,
        "lookup",
    )
    if ready.code is not Code.OK:
        check_clean(ready)
        pytest.fail(f"ModelReady answers readiness, not errors: {ready.code.name} {ready.details!r}")
    assert isinstance(ready.response, pb.ModelReadyResponse)
    if served:
        assert ready.response.ready
    calls: list[Callable[[], Any]] = [
        lambda: stub.ModelMetadata(
            pb.ModelMetadataRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
        ),
        lambda: stub.ModelConfig(pb.ModelConfigRequest(name=name, version=version), timeout=CALL_TIMEOUT_S),
        lambda: stub.ModelStatistics(
            pb.ModelStatisticsRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
        ),
    ]
    for call in calls:
        outcome = outcome_of(call, time.monotonic(), "lookup")
        if outcome.code is Code.OK:  # statistics also list a model that failed to load, or all models
            found = ready.response.ready or (call is calls[-1] and (name == "" or name in MODELS))
            assert found, (name, version, "answered for a model or version that is not served")
        else:
            check_clean(outcome)
            assert outcome.code in (Code.NOT_FOUND, Code.UNAVAILABLE), (outcome.code, outcome.details)
            assert not served, (name, version, outcome.code, outcome.details)


# --- Afterwards: the server is healthy and still right ---------------------------------------------


def test_server_is_healthy_and_right_after_the_fuzzing(
    server: RunningServer,
    channel: grpc.Channel,
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pytest.FixtureRequest,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=CALL_TIMEOUT_S)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    good = pb.ModelInferRequest(model_name="simple", id="after")
    a, b = np.arange(32, dtype="<i4").reshape(2, 16), np.full((2, 16), 7, "<i4")
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        good.inputs.add(name=name, datatype="INT32", shape=[2, 16])
        good.raw_input_contents.append(array.tobytes())
    response = stub.ModelInfer(good, timeout=CALL_TIMEOUT_S)
    assert response.id == "after"
    assert np.frombuffer(response.raw_output_contents[0], "<i4").reshape(2, 16).tolist() == (a + b).tolist()
    assert np.frombuffer(response.raw_output_contents[1], "<i4").reshape(2, 16).tolist() == (a - b).tolist()
    for name in ("dyn", "ident_bf16"):
        model = MODELS[name]
        good = pb.ModelInferRequest(model_name=name)
        dims = [3, 4 if name != "dyn" else 5]
        data = np.arange(math.prod(dims), dtype=WIRE[model.inputs[0].datatype]).tobytes()
        good.inputs.add(name="INPUT__0", datatype=model.inputs[0].datatype, shape=dims)
        good.raw_input_contents.append(data)
        response = stub.ModelInfer(good, timeout=CALL_TIMEOUT_S)
        assert response.raw_output_contents[0] == data
        assert server.queue_state(name) == (0, 0), "requests left behind in the queue"
    fuzzed = SENT["single"] + SENT["concurrent"] + SENT["garbage"]
    print(f"fuzzed calls: {dict(SENT)}, ModelInfer in all: {fuzzed}")
    # Hold the count when every fuzz test ran and passed (a failure stops its test early).
    if all(SENT[test] for test in ("single", "concurrent", "garbage")) and not request.session.testsfailed:
        assert fuzzed >= MIN_INFER_REQUESTS, dict(SENT)
