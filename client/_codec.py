"""numpy <-> Open Inference Protocol v2 tensors: the one datatype table, shared by client and server.

Raw bytes are the fast path: encoding is one `tobytes()`, decoding is `numpy.frombuffer` over the
message's own bytes (no copy). Typed `contents` are decoded too, since the protocol allows them.
Every check raises `CodecError` with a message that names the tensor, so callers can show it as is.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._proto import grpc_service_pb2 as pb


class CodecError(ValueError):
    """A tensor that does not match its declared datatype, shape or byte length."""


@dataclass(frozen=True, slots=True)
class Datatype:
    """One v2 datatype: its wire name, the numpy dtype of its raw bytes, its typed-contents field."""

    name: str
    wire: np.dtype[Any]
    contents_field: str | None

    @property
    def itemsize(self) -> int:
        return self.wire.itemsize


_LE = "<"  # the protocol is little-endian whatever the host is
DATATYPES: Final[dict[str, Datatype]] = {
    d.name: d
    for d in (
        Datatype("BOOL", np.dtype(np.bool_), "bool_contents"),
        Datatype("UINT8", np.dtype(_LE + "u1"), "uint_contents"),
        Datatype("UINT16", np.dtype(_LE + "u2"), "uint_contents"),
        Datatype("UINT32", np.dtype(_LE + "u4"), "uint_contents"),
        Datatype("UINT64", np.dtype(_LE + "u8"), "uint64_contents"),
        Datatype("INT8", np.dtype(_LE + "i1"), "int_contents"),
        Datatype("INT16", np.dtype(_LE + "i2"), "int_contents"),
        Datatype("INT32", np.dtype(_LE + "i4"), "int_contents"),
        Datatype("INT64", np.dtype(_LE + "i8"), "int64_contents"),
        # FP16 and BF16 travel only as raw bytes; BF16 has no numpy dtype, so its raw form is uint16.
        Datatype("FP16", np.dtype(_LE + "f2"), None),
        Datatype("BF16", np.dtype(_LE + "u2"), None),
        Datatype("FP32", np.dtype(_LE + "f4"), "fp32_contents"),
        Datatype("FP64", np.dtype(_LE + "f8"), "fp64_contents"),
        Datatype("BYTES", np.dtype(np.object_), "bytes_contents"),
    )
}

_BY_NUMPY: Final[dict[np.dtype[Any], str]] = {
    d.wire: d.name for d in DATATYPES.values() if d.name not in {"BF16", "BYTES"}
}


def datatype(name: str, tensor: str) -> Datatype:
    """The table entry for a wire datatype name, or a CodecError naming the tensor."""
    found = DATATYPES.get(name)
    if found is None:
        known = ", ".join(DATATYPES)
        raise CodecError(f"tensor '{tensor}': unknown datatype '{name}' (expected one of {known})")
    return found


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The v2 datatype name for a numpy array (bfloat16 arrays from ml_dtypes map to BF16)."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    name = _BY_NUMPY.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if name is None:
        raise CodecError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


MAX_DIMENSION: Final = 2**31 - 1  # numpy cannot shape even an empty array past this on every platform


def element_count(shape: Sequence[int], tensor: str) -> int:
    for dim in shape:
        if dim < 0:
            raise CodecError(f"tensor '{tensor}': shape {list(shape)} has a negative dimension")
        if dim > MAX_DIMENSION:
            raise CodecError(f"tensor '{tensor}': shape {list(shape)} has a dimension over {MAX_DIMENSION}")
    return math.prod(shape)


def to_raw(array: npt.NDArray[Any], name: str) -> bytes:
    """The raw wire bytes of an array whose datatype is `name` (row-major, little-endian)."""
    if name == "BYTES":
        return serialize_bytes(array)
    if name == "BF16" and array.dtype.name != "bfloat16":
        # Like tritonclient: a float32 array sent as BF16 keeps the top 16 bits of each value.
        return (np.ascontiguousarray(array, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    wire = DATATYPES[name].wire if name != "BF16" else array.dtype
    return np.ascontiguousarray(array, dtype=wire).tobytes()


def from_raw(name: str, shape: Sequence[int], raw: bytes, tensor: str) -> npt.NDArray[Any]:
    """A read-only view of raw wire bytes as an array (BF16 as its uint16 bit pattern)."""
    dtype = datatype(name, tensor)
    count = element_count(shape, tensor)
    if dtype.name == "BYTES":
        return deserialize_bytes(raw, count, tensor).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise CodecError(
            f"tensor '{tensor}': {len(raw)} bytes of raw data, expected {expected} "
            f"for shape {list(shape)} of {name} ({dtype.itemsize} bytes each)"
        )
    return np.frombuffer(raw, dtype=dtype.wire).reshape(shape)


def from_contents(
    name: str, shape: Sequence[int], contents: pb.InferTensorContents, tensor: str
) -> npt.NDArray[Any]:
    """An array from typed `contents`, checking that exactly the right field carries the data."""
    dtype = datatype(name, tensor)
    if dtype.contents_field is None:
        raise CodecError(f"tensor '{tensor}': {name} data must be sent in raw_input_contents")
    for field, _ in contents.ListFields():
        if field.name != dtype.contents_field:
            raise CodecError(
                f"tensor '{tensor}': datatype {name} expects contents.{dtype.contents_field}, "
                f"got contents.{field.name}"
            )
    values = getattr(contents, dtype.contents_field)
    count = element_count(shape, tensor)
    if len(values) != count:
        raise CodecError(
            f"tensor '{tensor}': {len(values)} values in contents.{dtype.contents_field}, "
            f"expected {count} for shape {list(shape)}"
        )
    if dtype.name == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    if dtype.wire.kind in "iu" and values:
        # Typed int fields are wider than INT8/16 and UINT8/16: values must fit the datatype.
        info = np.iinfo(dtype.wire)
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            raise CodecError(
                f"tensor '{tensor}': contents.{dtype.contents_field} value {low if low < info.min else high} "
                f"is out of range for {name} ({info.min}..{info.max})"
            )
    return np.array(values, dtype=dtype.wire).reshape(shape)


def bf16_to_float32(bits: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """BF16 bit patterns widened exactly to float32 (numpy has no bfloat16 of its own)."""
    return (bits.astype("<u4") << 16).view("<f4").astype(np.float32, copy=False)


def serialize_bytes(array: npt.NDArray[Any]) -> bytes:
    """BYTES layout: each element as a 4-byte little-endian length followed by its bytes (str as UTF-8)."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        if isinstance(item, str):
            data = item.encode()
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        else:  # bytes(5) would be five zero bytes, not an error
            raise CodecError(f"BYTES elements must be bytes or str, got {type(item).__name__}")
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, count: int, tensor: str) -> npt.NDArray[np.object_]:
    """`count` BYTES elements from their wire layout, each checked against the bytes that remain."""
    if len(raw) < 4 * count:  # checked before allocating: a shape may claim far more than was sent
        raise CodecError(
            f"tensor '{tensor}': {len(raw)} bytes of BYTES data cannot hold {count} elements "
            f"(each needs at least its 4-byte length)"
        )
    items = np.empty(count, dtype=np.object_)
    offset = 0
    view = memoryview(raw)
    for index in range(count):
        if offset + 4 > len(raw):
            raise CodecError(
                f"tensor '{tensor}': BYTES data ends inside the 4-byte length of element {index} of {count}"
            )
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise CodecError(
                f"tensor '{tensor}': BYTES element {index} has length {length}, past the end of the "
                f"data ({len(raw) - offset} bytes left)"
            )
        items[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise CodecError(
            f"tensor '{tensor}': {len(raw) - offset} bytes left after {count} BYTES elements "
            f"(more elements than the shape holds?)"
        )
    return items
