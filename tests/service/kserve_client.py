"""Scores inputs on a running server with the ``kserve`` SDK's REST and gRPC clients.

Run as a script in a process of its own (``python -m tests.service.kserve_client REST_URL
GRPC_TARGET IN.npz OUT.npz``): the SDK registers the Open Inference Protocol's messages in
protobuf's default pool, as ``tritonclient.grpc`` does, and the two cannot be imported into
one process. IN holds ``x`` float32 [N, 1, 28, 28]; OUT gets, per client ("rest", "grpc"),
the predicted class (argmax of the logits), score, flagged and kind of every input.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

MODEL = "gradsentry"
OUTPUTS = ("logits", "gradsentry_score", "gradsentry_flagged", "gradsentry_kind")


def request(x: np.ndarray, binary: bool) -> InferRequest:
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=MODEL, infer_inputs=[tensor])


def row(response: object) -> tuple[int, float, bool, str]:
    out = {o.name: o.as_numpy() for o in response.outputs}
    kind = out["gradsentry_kind"].reshape(-1)[0]
    return (
        int(out["logits"].argmax(1)[0]),
        float(out["gradsentry_score"][0]),
        bool(out["gradsentry_flagged"][0]),
        kind.decode() if isinstance(kind, bytes) else str(kind),
    )


async def main(rest_url: str, grpc_target: str, x: np.ndarray) -> dict[str, list]:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    grpc_client = InferenceGRPCClient(grpc_target, timeout=60)
    rows: dict[str, list] = {"rest": [], "grpc": []}
    try:
        assert await rest.is_server_ready(rest_url)
        for i in range(len(x)):
            # JSON and binary tensors alternate: both encodings of the REST protocol.
            reply = await rest.infer(rest_url, request(x[i : i + 1], binary=i % 2 == 1), MODEL)
            rows["rest"].append(row(reply))
            rows["grpc"].append(row(await grpc_client.infer(request(x[i : i + 1], binary=True))))
    finally:
        await rest.close()
        await grpc_client.close()
    return rows


if __name__ == "__main__":
    rest_url, grpc_target, src, dst = sys.argv[1:5]
    rows = asyncio.run(main(rest_url, grpc_target, np.load(src)["x"]))
    columns = {}
    for client, values in rows.items():
        cls, score, flagged, kind = zip(*values, strict=True)
        columns.update(
            {
                f"{client}_class": np.array(cls),
                f"{client}_score": np.array(score),
                f"{client}_flagged": np.array(flagged),
                f"{client}_kind": np.array(kind),
            }
        )
    np.savez(dst, **columns)
