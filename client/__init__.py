"""torchwire's client: numpy in, numpy out, over the Open Inference Protocol v2 (gRPC).

    from torchwire.client import Client
    with Client("localhost:8001") as client:
        outputs = client.predict("digits", {"INPUT__0": images})

Needs only grpcio, protobuf and numpy: no torch.
"""

from ._calls import (
    USE_CLIENT_DEFAULT,
    ChannelOptions,
    ModelMetadata,
    ServerMetadata,
    StreamResult,
    TensorMetadata,
)
from ._codec import CodecError
from ._errors import InferenceError
from .aio import AsyncClient
from .sync import Client

__all__ = [
    "USE_CLIENT_DEFAULT",
    "AsyncClient",
    "ChannelOptions",
    "Client",
    "CodecError",
    "InferenceError",
    "ModelMetadata",
    "ServerMetadata",
    "StreamResult",
    "TensorMetadata",
]
