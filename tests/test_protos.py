"""The generated stubs are exactly what protos/ produces, and coexist with tritonclient's copies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_our_messages_live_beside_tritonclients() -> None:
    """Both define inference.ModelInferRequest; ours sit in a private pool, so both import."""
    import tritonclient.grpc.service_pb2 as triton_pb

    from torchwire.client._proto import grpc_service_pb2 as ours

    request = ours.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01\x02"])
    request.inputs.add(name="x", datatype="UINT8", shape=[2])
    theirs = triton_pb.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.model_name == "m" and theirs.inputs[0].shape == [2]
    assert ours.ModelInferRequest.DESCRIPTOR.full_name == theirs.DESCRIPTOR.full_name
    assert ours.ModelInferRequest.DESCRIPTOR.file.pool is not theirs.DESCRIPTOR.file.pool


def _fields(message: object, prefix: str = "") -> dict[str, tuple[object, ...]]:
    """Every field of a message and its nested messages: name -> (number, type, label, type name)."""
    found: dict[str, tuple[object, ...]] = {}
    descriptor = message  # a Descriptor
    for field in descriptor.fields:  # type: ignore[attr-defined]
        type_name = (
            field.message_type.full_name
            if field.message_type
            else (field.enum_type.full_name if field.enum_type else "")
        )
        found[f"{prefix}{descriptor.name}.{field.name}"] = (  # type: ignore[attr-defined]
            field.number,
            field.type,
            # protobuf 7 deprecates `label`; older runtimes lack `is_repeated`
            field.is_repeated if hasattr(field, "is_repeated") else field.label == 3,
            type_name,
            field.containing_oneof and field.containing_oneof.name,
        )
    for nested in descriptor.nested_types:  # type: ignore[attr-defined]
        found |= _fields(nested, f"{prefix}{descriptor.name}.")  # type: ignore[attr-defined]
    return found


def test_wire_compatible_with_tritonclients_protocol_files() -> None:
    """Field for field (name, number, type, label, oneof) against the copies tritonclient ships."""
    import tritonclient.grpc.model_config_pb2 as triton_config
    import tritonclient.grpc.service_pb2 as triton_service

    from torchwire.client._proto import grpc_service_pb2, model_config_pb2

    for ours, theirs in ((grpc_service_pb2, triton_service), (model_config_pb2, triton_config)):
        mine = {k: v for m in ours.DESCRIPTOR.message_types_by_name.values() for k, v in _fields(m).items()}
        other = {
            k: v for m in theirs.DESCRIPTOR.message_types_by_name.values() for k, v in _fields(m).items()
        }
        shared = set(mine) & set(other)
        assert len(shared) > 100
        assert {k: mine[k] for k in shared} == {k: other[k] for k in shared}
        assert set(other) - set(mine) == set(), "fields tritonclient knows that we lack"
    ours_rpc = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs_rpc = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours_rpc.full_name == theirs_rpc.full_name == "inference.GRPCInferenceService"
    for method in theirs_rpc.methods:
        mine_method = ours_rpc.methods_by_name[method.name]
        assert mine_method.input_type.full_name == method.input_type.full_name
        assert mine_method.output_type.full_name == method.output_type.full_name
        assert mine_method.client_streaming == method.client_streaming
        assert mine_method.server_streaming == method.server_streaming
