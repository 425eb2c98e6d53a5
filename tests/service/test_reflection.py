"""gRPC server reflection describes every served service, the Open Inference Protocol
included, to the real grpcurl (the binary of ``make grpcurl``): it lists, describes and calls
``inference.GRPCInferenceService`` with no .proto file at hand, although the OIP stubs live
in a descriptor pool of their own."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service.server import SentryServer
from tests.servers import WAIT, demo_server

GRPCURL = Path(sys.executable).parent / "grpcurl"
OIP = "inference.GRPCInferenceService"
SERVED = {
    "gradsentry.v1.Reliability",
    OIP,
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}
# (name, numpy little-endian dtype) of every default output.
OUTPUTS = [
    ("logits", "<f4"),
    ("probabilities", "<f4"),
    ("gradsentry_score", "<f8"),
    ("gradsentry_flagged", "?"),
]


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[SentryServer, str]]:
    with demo_server() as (running, port):
        yield running, f"127.0.0.1:{port}"


def grpcurl(target: str, *args: str, data: str | None = None) -> str:
    """Run grpcurl against ``target`` (plaintext, reflection only); its stdout."""
    argv = [str(GRPCURL), "-plaintext", *(["-d", "@"] if data is not None else []), target]
    done = subprocess.run([*argv, *args], input=data, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_grpcurl_lists_and_describes_the_oip_service(target: tuple[SentryServer, str]) -> None:
    _, address = target
    assert set(grpcurl(address, "list").split()) == SERVED
    methods = set(grpcurl(address, "list", OIP).split())
    assert {f"{OIP}.ServerLive", f"{OIP}.ModelInfer", f"{OIP}.ModelMetadata"} <= methods
    described = grpcurl(address, "describe", OIP)
    assert f"{OIP} is a service:" in described
    assert "rpc ModelInfer ( .inference.ModelInferRequest ) returns" in described
    # The messages are described too: what a caller needs to write a request.
    tensor = grpcurl(address, "describe", "inference.ModelInferRequest.InferInputTensor")
    assert "InferTensorContents contents" in tensor
    contents = grpcurl(address, "describe", "inference.InferTensorContents")
    assert "repeated float fp32_contents" in contents


def test_grpcurl_calls_oip_with_json_through_reflection_only(
    target: tuple[SentryServer, str], samples
) -> None:
    running, address = target
    assert json.loads(grpcurl(address, f"{OIP}/ServerLive", data="{}")) == {"live": True}

    x = samples[0][:1].astype(np.float32)[:, None] / 255.0  # [1, 1, 28, 28] in [0, 1]
    body = {
        "model_name": "gradsentry",
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 1, 28, 28],
                "contents": {"fp32_contents": x.reshape(-1).tolist()},
            }
        ],
    }
    reply = json.loads(grpcurl(address, f"{OIP}/ModelInfer", data=json.dumps(body)))
    names = [o["name"] for o in reply["outputs"]]
    assert names == [name for name, _ in OUTPUTS] + ["gradsentry_kind"]
    got = {
        name: np.frombuffer(base64.b64decode(raw), dtype)
        for (name, dtype), raw in zip(OUTPUTS, reply["raw_output_contents"], strict=False)
    }

    # The same input as raw bytes through the generated stub: the same answer, bit for bit.
    request = oip_pb.ModelInferRequest(model_name="gradsentry")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    with grpc.insecure_channel(address) as channel:
        expected = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT)
    for (name, dtype), raw in zip(OUTPUTS, expected.raw_output_contents, strict=False):
        np.testing.assert_array_equal(got[name], np.frombuffer(raw, dtype), err_msg=name)
    assert got["logits"].shape == (running.plane.num_classes,)
    assert 0.0 <= got["gradsentry_score"][0] <= 1.0
