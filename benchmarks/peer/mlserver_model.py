"""The demo classifier as an MLServer model, forward only: the peer gradsentry is compared to.

MLServer (``mlserver start``) imports this module from the peer virtual environment
(``benchmarks/peer_mlserver.py`` builds it) and serves the model over the Open Inference
Protocol. ``parameters.uri`` is the demo's state dict, loaded with ``weights_only=True`` into
the demo architecture (``detectors.demo.model``, imported from the repository); each request
carries float32 inputs [B, 1, 28, 28] in [0, 1]; the answer is ``probabilities`` [B, 10], the
softmax of the logits. MLServer's adaptive batching stacks concurrent requests along B.
"""

from __future__ import annotations

import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from detectors.demo.model import build_model


class DemoClassifier(MLModel):
    """Forward pass of the demo CNN, one torch thread (as gradsentry's model worker)."""

    async def load(self) -> bool:
        torch.set_num_threads(1)
        model = build_model()
        uri = self.settings.parameters.uri
        model.load_state_dict(torch.load(uri, map_location="cpu", weights_only=True))
        self._model = model.eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        (request_input,) = payload.inputs
        x = torch.from_numpy(NumpyCodec.decode_input(request_input).astype("float32", copy=False))
        with torch.inference_mode():
            probabilities = self._model(x.reshape(-1, 1, 28, 28)).softmax(1).numpy()
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("probabilities", probabilities)],
        )
