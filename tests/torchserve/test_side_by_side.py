"""gradsentry beside a real TorchServe 0.12 serving the same .mar: same predictions.

The demo model is archived by the real torch-model-archiver with a small custom handler
(``benchmarks/torchserve_harness.py``), served by TorchServe on 127.0.0.1 with its own
dynamic batching, and loaded by gradsentry from the very same file (``model_format: mar``).
For 240 demo inputs — clean digits, FGSM and PGD attacks, two corruptions and two OOD sets —
TorchServe's gRPC predictions must equal gradsentry's predicted classes, and the
probabilities must agree to 1e-5.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest
import torch

from benchmarks.torchserve_harness import (
    TorchServe,
    build_mar,
    inference_protos,
    prediction_request,
    probabilities,
)
from detectors.challenges.registry import ChallengeContext, parse_spec
from detectors.demo import ARTIFACTS, load_demo_model
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import load_config
from service.server import SentryServer, create_server

TOLERANCE = 1e-5
# (challenge spec or "clean", how many of the 64 sample digits it starts from)
SETS: tuple[tuple[str, int], ...] = (
    ("clean", 64),
    ("fgsm:eps=0.2", 48),
    ("pgd", 16),
    ("corruption:type=gaussian_noise,severity=3", 32),
    ("corruption:type=brightness,severity=5", 32),
    ("ood:source=uniform", 24),
    ("ood:source=digits", 24),
)


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, list[str]]:
    """float32 [240, 1, 28, 28] in [0, 1] and the set each row comes from."""
    data = np.load(ARTIFACTS / "samples.npz")
    clean = (data["images"].astype(np.float32) / 255.0)[:, None]
    labels = data["labels"].astype(np.int64)
    model = load_demo_model()
    rows, names = [], []
    for spec, n in SETS:
        if spec == "clean":
            x = clean[:n]
        else:
            ctx = ChallengeContext(images=clean[:n], labels=labels[:n], model=model, seed=0)
            x = parse_spec(spec).generate(ctx).astype(np.float32)
        rows.append(x)
        names += [spec] * len(x)
    return np.concatenate(rows), names


@pytest.fixture(scope="module")
def mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mar(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def torchserve(mar: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    with TorchServe(mar, tmp_path_factory.mktemp("ts"), batch_size=8, max_batch_delay_ms=5) as ts:
        yield ts


@pytest.fixture(scope="module")
def ts_protos(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    return inference_protos(tmp_path_factory.mktemp("ts-protos"))


@pytest.fixture(scope="module")
def sidecar(mar: Path) -> Iterator[tuple[SentryServer, int]]:
    torch.set_num_threads(1)
    environ = {
        "GRADSENTRY_PORT": "0",
        "GRADSENTRY_METRICS_PORT": "0",
        "GRADSENTRY_DEVICE": "cpu",
        "GRADSENTRY_MODEL_FORMAT": "mar",
        "GRADSENTRY_MODEL_PATH": str(mar),
    }
    running, port = create_server(load_config(environ=environ))
    yield running, port
    running.stop(None).wait(10)


def torchserve_probabilities(
    ts: TorchServe, protos: tuple[ModuleType, ModuleType], x: np.ndarray
) -> np.ndarray:
    """[N, 10] from TorchServe's gRPC Predictions, 8 calls in flight so its batching groups
    them."""
    pb2, pb2_grpc = protos
    with grpc.insecure_channel(ts.grpc_address) as channel:
        stub = pb2_grpc.InferenceAPIsServiceStub(channel)

        def predict(xi: np.ndarray) -> np.ndarray:
            return probabilities(stub.Predictions(prediction_request(pb2, xi), timeout=60))

        with ThreadPoolExecutor(8) as pool:
            return np.stack(list(pool.map(predict, x)))


def sidecar_responses(port: int, x: np.ndarray) -> list[pb.CheckResponse]:
    """gradsentry's CheckBatch responses (with probabilities) for every row of x."""
    out: list[pb.CheckResponse] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        for i in range(0, len(x), 32):
            requests = [
                pb.CheckRequest(
                    tensor=pb.Tensor(
                        dtype=pb.FLOAT32, shape=[1, 28, 28], data=xi.astype("<f4").tobytes()
                    ),
                    return_probabilities=True,
                )
                for xi in x[i : i + 32]
            ]
            reply = stub.CheckBatch(pb.CheckBatchRequest(requests=requests), timeout=120)
            out.extend(reply.responses)
    return out


def test_torchserve_and_gradsentry_agree_on_the_same_mar(
    torchserve: TorchServe,
    ts_protos: tuple[ModuleType, ModuleType],
    sidecar: tuple[SentryServer, int],
    inputs: tuple[np.ndarray, list[str]],
) -> None:
    x, names = inputs
    assert len(x) >= 200
    served = torchserve_probabilities(torchserve, ts_protos, x)
    checked = sidecar_responses(sidecar[1], x)
    assert len(checked) == len(x)
    np.testing.assert_allclose(served.sum(1), 1.0, atol=1e-5)
    predicted = np.array([r.predicted_class for r in checked])
    np.testing.assert_array_equal(served.argmax(1), predicted)
    probs = np.array([list(r.probabilities) for r in checked], dtype=np.float64)
    assert probs.shape == served.shape == (len(x), 10)
    worst = float(np.abs(probs - served).max())
    assert worst <= TOLERANCE, f"probabilities differ by up to {worst:.3g}"
    # Labels come from the archive's index_to_name.json.
    assert [r.label for r in checked] == [str(c) for c in predicted]
    # The inputs exercise the detector: clean digits mostly pass, OOD noise is flagged.
    flagged = np.array([r.verdict == pb.FLAGGED for r in checked])
    kinds = np.array(names)
    assert flagged[kinds == "clean"].mean() < 0.5
    assert flagged[kinds == "ood:source=uniform"].all()
    print(
        f"[torchserve side by side] {len(x)} inputs, classes equal, max |p diff| "
        f"{worst:.2e}, gradsentry flagged {int(flagged.sum())}"
    )
