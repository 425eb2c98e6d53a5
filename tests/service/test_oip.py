"""The Open Inference Protocol driven by real clients, unchanged: ``tritonclient`` (gRPC and
HTTP, raw / binary inputs), the ``kserve`` SDK (REST and gRPC, in a process of its own) and
``curl`` with JSON, against one real server that also speaks gradsentry.v1 on the same port.

For 256 demo inputs (64 each clean, FGSM, Gaussian noise, uniform-noise OOD: the inputs of
``gradsentry check --demo``) every client gets exactly the prediction, score, flagged and
kind that gradsentry.v1 ``Check`` gives. Each input goes alone in every call, as in
``Check``, so every transport hands the model the same batch (one input, padded to the
same ``min_rows``): the answers are then bitwise equal, and compared with ``==``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service.server import SentryServer
from tests.servers import ROOT, WAIT, demo_server, tensor_request

MODEL = "gradsentry"
PER_KIND = 64  # x 4 kinds = 256 inputs
OUTPUT_NAMES = ["logits", "probabilities", "gradsentry_score", "gradsentry_flagged"]
OUTPUT_NAMES += ["gradsentry_kind"]
Answer = tuple[int, float, bool, str]


@pytest.fixture(scope="module")
def oip_server() -> Iterator[tuple[SentryServer, int]]:
    """A server with OIP REST on (a free port) beside gRPC."""
    with demo_server(GRADSENTRY_REST_ENABLED="true", GRADSENTRY_REST_PORT="0") as started:
        yield started


@pytest.fixture(scope="module")
def demo_x() -> np.ndarray:
    """float32 [256, 1, 28, 28]: clean, adversarial, corrupted and OOD demo inputs."""
    from service.check import demo_inputs  # crafts the attacks: torch and ART

    torch.set_num_threads(1)
    return np.stack([d.image for d in demo_inputs(per_kind=PER_KIND)]).astype(np.float32)


def v1_answers(port: int, x: np.ndarray) -> list[Answer]:
    kinds = {pb.ADVERSARIAL: "adversarial", pb.OOD: "ood", pb.CORRUPTED: "corrupted"}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        replies = [stub.Check(tensor_request(x[i]), timeout=WAIT) for i in range(len(x))]
    return [
        (r.predicted_class, r.score, r.verdict == pb.FLAGGED, kinds.get(r.kind, ""))
        for r in replies
    ]


def answer_of(result: object) -> Answer:
    """A tritonclient InferResult (gRPC or HTTP) of one input -> its answer."""
    kind = result.as_numpy("gradsentry_kind")[0]  # type: ignore[attr-defined]
    return (
        int(result.as_numpy("logits").argmax(1)[0]),  # type: ignore[attr-defined]
        float(result.as_numpy("gradsentry_score")[0]),  # type: ignore[attr-defined]
        bool(result.as_numpy("gradsentry_flagged")[0]),  # type: ignore[attr-defined]
        kind.decode() if isinstance(kind, bytes) else str(kind),
    )


def triton_grpc_answers(port: int, x: np.ndarray) -> list[Answer]:
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        out = []
        for i in range(len(x)):
            tensor = triton_grpc.InferInput("input", [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(x[i : i + 1])  # raw_input_contents
            out.append(answer_of(client.infer(MODEL, [tensor], client_timeout=WAIT)))
        return out
    finally:
        client.close()


def triton_http_answers(port: int, x: np.ndarray) -> list[Answer]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=WAIT)
    try:
        out = []
        for i in range(len(x)):
            tensor = triton_http.InferInput("input", [1, 1, 28, 28], "FP32")
            tensor.set_data_from_numpy(x[i : i + 1])  # the binary tensor extension
            out.append(answer_of(client.infer(MODEL, [tensor])))
        return out
    finally:
        client.close()


def curl_infer(port: int, body: dict, *args: str) -> tuple[int, dict]:
    """POST ``body`` as JSON to the infer endpoint with curl: (HTTP status, JSON reply)."""
    done = subprocess.run(
        [
            "curl", "-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json",
            "--data-binary", "@-", *args,
            f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
        ],
        input=json.dumps(body), capture_output=True, text=True, timeout=WAIT, check=True,
    )  # fmt: skip
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def curl_answers(port: int, x: np.ndarray) -> list[Answer]:
    out = []
    for i in range(len(x)):
        # Nested lists, as a person writes them; float32 values print exactly in JSON.
        data = x[i : i + 1].tolist()
        body = {
            "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": data}]
        }
        status, reply = curl_infer(port, body)
        assert status == 200, reply
        got = {o["name"]: o for o in reply["outputs"]}
        assert [o["name"] for o in reply["outputs"]] == OUTPUT_NAMES
        out.append(
            (
                int(np.argmax(got["logits"]["data"])),
                float(got["gradsentry_score"]["data"][0]),
                bool(got["gradsentry_flagged"]["data"][0]),
                str(got["gradsentry_kind"]["data"][0]),
            )
        )
    return out


def kserve_answers(rest_port: int, port: int, x: np.ndarray, tmp: Path) -> dict[str, list]:
    np.savez(tmp / "in.npz", x=x)
    subprocess.run(
        [
            sys.executable, "-m", "tests.service.kserve_client",
            f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{port}",
            str(tmp / "in.npz"), str(tmp / "out.npz"),
        ],
        cwd=ROOT, check=True, timeout=10 * WAIT,
    )  # fmt: skip
    got = np.load(tmp / "out.npz")
    return {
        client: [
            (int(c), float(s), bool(f), str(k))
            for c, s, f, k in zip(
                got[f"{client}_class"],
                got[f"{client}_score"],
                got[f"{client}_flagged"],
                got[f"{client}_kind"],
                strict=True,
            )
        ]
        for client in ("rest", "grpc")
    }


def test_every_oip_client_gets_the_v1_answers_exactly(
    oip_server: tuple[SentryServer, int], demo_x: np.ndarray, tmp_path: Path
) -> None:
    running, port = oip_server
    rest_port = running.rest_port
    assert rest_port is not None and len(demo_x) >= 200
    reference = v1_answers(port, demo_x)
    flagged = [a[2] for a in reference]
    assert 0 < sum(flagged) < len(flagged)  # both verdicts are exercised
    assert triton_grpc_answers(port, demo_x) == reference
    assert triton_http_answers(rest_port, demo_x) == reference
    assert curl_answers(rest_port, demo_x) == reference
    kserve = kserve_answers(rest_port, port, demo_x, tmp_path)
    assert kserve["rest"] == reference
    assert kserve["grpc"] == reference


def test_liveness_readiness_and_metadata_through_tritonclient(
    oip_server: tuple[SentryServer, int],
) -> None:
    running, port = oip_server
    expected_inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    expected_outputs = {
        "logits": ("FP32", [-1, 10]),
        "probabilities": ("FP32", [-1, 10]),
        "gradsentry_score": ("FP64", [-1]),
        "gradsentry_flagged": ("BOOL", [-1]),
        "gradsentry_kind": ("BYTES", [-1]),
        "gradsentry_features": ("FP64", [-1, len(running.plane.info().feature_names)]),
    }
    g = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    h = triton_http.InferenceServerClient(f"127.0.0.1:{running.rest_port}")
    try:
        for client in (g, h):
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready(MODEL)
        meta = g.get_model_metadata(MODEL, as_json=True)  # int64 shapes come as strings
        rest_meta = h.get_model_metadata(MODEL)
        for m in (meta, rest_meta):
            assert m["name"] == MODEL and m["versions"] == ["1"]
            inputs = [{**t, "shape": [int(d) for d in t["shape"]]} for t in m["inputs"]]
            assert inputs == expected_inputs
            outputs = {
                t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in m["outputs"]
            }
            assert outputs == expected_outputs
        assert g.get_server_metadata(as_json=True)["name"] == "gradsentry"
        with pytest.raises(InferenceServerException) as info:
            g.get_model_metadata("resnet")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert "unknown model 'resnet'" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            h.get_model_metadata("resnet")
        assert info.value.status() == "404"
        assert not h.is_model_ready("resnet")
    finally:
        g.close()
        h.close()


def test_outputs_as_requested_typed_contents_and_batches(
    oip_server: tuple[SentryServer, int], demo_x: np.ndarray
) -> None:
    """Named outputs come in the order asked (features only when asked); typed contents
    answer as raw inputs do; a call of N inputs answers each as gradsentry.v1 does."""
    _running, port = oip_server
    x = demo_x[::32][:8]  # 8 inputs of every kind
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        v1 = pb_grpc.ReliabilityStub(channel)
        oip = oip_grpc.GRPCInferenceServiceStub(channel)
        ref = [
            v1.Check(tensor_request(x[i], return_probabilities=True, return_features=True))
            for i in range(len(x))
        ]
        for i in range(len(x)):
            request = oip_pb.ModelInferRequest(model_name=MODEL, id=f"call-{i}")
            tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
            tensor.contents.fp32_contents.extend(x[i].reshape(-1).tolist())
            request.outputs.add(name="gradsentry_features")
            request.outputs.add(name="probabilities")
            reply = oip.ModelInfer(request, timeout=WAIT)
            assert reply.id == f"call-{i}" and reply.model_name == MODEL
            assert [o.name for o in reply.outputs] == ["gradsentry_features", "probabilities"]
            features = np.frombuffer(reply.raw_output_contents[0], "<f8")
            probabilities = np.frombuffer(reply.raw_output_contents[1], "<f4")
            assert features.tolist() == list(ref[i].features)
            assert probabilities.tolist() == list(ref[i].probabilities)

        request = oip_pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[len(x), 1, 28, 28])
        request.raw_input_contents.append(x.tobytes())
        reply = oip.ModelInfer(request, timeout=WAIT)
    out = {
        o.name: (list(o.shape), raw)
        for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }
    assert list(out) == OUTPUT_NAMES
    assert out["logits"][0] == [len(x), 10] and out["gradsentry_score"][0] == [len(x)]
    scores = np.frombuffer(out["gradsentry_score"][1], "<f8")
    predicted = np.frombuffer(out["logits"][1], "<f4").reshape(len(x), 10).argmax(1)
    # In one batch of 8 the model sums in another order than for one input padded to
    # min_rows: scores agree to float noise (the server's calibration bounds it, 1e-9
    # relative; 1e-6 leaves margin), predictions exactly.
    assert predicted.tolist() == [r.predicted_class for r in ref]
    assert scores == pytest.approx([r.score for r in ref], abs=1e-6)


def test_curl_errors_are_json_naming_the_problem(oip_server: tuple[SentryServer, int]) -> None:
    running, _ = oip_server
    port = running.rest_port
    assert port is not None
    good = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
    cases = [
        ({"inputs": [{**good, "datatype": "INT32"}]}, "datatype 'INT32'"),
        ({"inputs": [{**good, "name": "image"}]}, "unknown input 'image'"),
        ({"inputs": [{**good, "data": [0.5] * 783}]}, "783 values"),
        ({"inputs": [{**good, "shape": [1_000_000_000_000, 1, 28, 28]}]}, "split the call"),
        ({"inputs": [good], "outputs": [{"name": "boxes"}]}, "unknown output 'boxes'"),
    ]
    for body, words in cases:
        status, reply = curl_infer(port, body)
        assert status == 400 and words in reply["error"], (body.keys(), reply)
    status, reply = curl_infer(port, {"inputs": [good]}, "-H", "x-request-id: two words")
    assert status == 400 and "x-request-id" in reply["error"]


def test_the_top_of_a_float32_range_is_inside_it_for_every_client() -> None:
    """``input_range: [0, 0.1]``: in float32 it ends at 0.1000000015. curl's JSON 0.1,
    tritonclient's float32 0.1 and a white PNG (pixel 255) all land there and are
    answered; curl's 0.1000001, past that end, is refused with a 400 naming the range."""
    import io

    from PIL import Image

    with demo_server(
        GRADSENTRY_REST_ENABLED="true", GRADSENTRY_REST_PORT="0", GRADSENTRY_INPUT_RANGE="[0, 0.1]"
    ) as (running, port):
        assert running.rest_port is not None
        body = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.1] * 784}
        status, reply = curl_infer(running.rest_port, {"inputs": [body]})
        assert status == 200, reply
        status, reply = curl_infer(
            running.rest_port, {"inputs": [{**body, "data": [0.1000001] * 784}]}
        )
        assert status == 400 and "values out of range" in reply["error"], reply
        assert "takes [0.0, 0.1]" in reply["error"], reply
        triton_grpc_answers(port, np.full((1, 1, 28, 28), 0.1, np.float32))
        png = io.BytesIO()
        Image.fromarray(np.full((28, 28), 255, np.uint8), mode="L").save(png, "PNG")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.ReliabilityStub(channel).Check(
                pb.CheckRequest(image=pb.EncodedImage(data=png.getvalue())), timeout=WAIT
            )
        assert reply.verdict in (pb.RELIABLE, pb.FLAGGED)
