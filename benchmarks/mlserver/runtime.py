"""An MLServer runtime for one of torchwire's bundled TorchScript models, as an MLServer user would
write it. For side-by-side benchmarks only (benchmarks/versus.py, through server.py)."""

from __future__ import annotations

import torch
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]


class TorchScriptModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        self.module = torch.jit.load(self.settings.parameters.uri, map_location="cpu").eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = [torch.from_numpy(NumpyCodec.decode_input(tensor)) for tensor in payload.inputs]
        with torch.inference_mode():
            result = self.module(*inputs).numpy()
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("OUTPUT__0", result)]
        )
