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
