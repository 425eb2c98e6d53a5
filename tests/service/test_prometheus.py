"""A real Prometheus (Debian's package) scrapes a real sidecar on 127.0.0.1 that serves clean
and challenging demo inputs; the verdict counters and a latency quantile are then read back
through Prometheus's HTTP API."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from detectors.challenges.registry import ChallengeContext, parse_spec
from detectors.demo import load_demo_model
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.server import SentryServer
from tests.prometheus_helpers import (
    Prometheus,
    running_prometheus,
    scrape_config,
    start_sidecar,
    target_up,
    tensor_request,
    wait_for,
)


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SentryServer]:
    with start_sidecar() as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(sidecar: SentryServer, tmp_path_factory) -> Iterator[Prometheus]:
    assert sidecar.metrics_port is not None
    root = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(scrape_config(sidecar.metrics_port), root) as server:
        yield server


def test_prometheus_scrapes_verdicts_and_latency(sidecar, prometheus, samples) -> None:
    wait_for("the sidecar target is up", lambda: target_up(prometheus), prometheus.log)
    images, labels = samples
    clean = (images[:8].astype(np.float32) / 255.0)[:, None]
    fgsm = parse_spec("fgsm:eps=0.2").generate(
        ChallengeContext(images=clean, labels=labels[:8], model=load_demo_model(), seed=0)
    )
    noise = np.random.default_rng(0).uniform(size=(4, 1, 28, 28)).astype(np.float32)
    inputs = np.concatenate([clean, fgsm, noise])
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        verdicts: list[int] = []
        # Traffic spread over several 1 s scrapes, so rate() sees the counters grow.
        for round_ in range(4):
            for x in inputs[round_::4]:
                verdicts.append(stub.Check(tensor_request(x), timeout=30).verdict)
            time.sleep(1.2)
    sent = {"RELIABLE": verdicts.count(pb.RELIABLE), "FLAGGED": verdicts.count(pb.FLAGGED)}
    assert sent["RELIABLE"] >= 6 and sent["FLAGGED"] >= 10, sent  # clean vs FGSM + noise

    def counted() -> dict[str, float] | None:
        rows = prometheus.query("sum by (verdict) (gradsentry_verdicts_total)")
        seen = {row["metric"]["verdict"]: float(row["value"][1]) for row in rows}
        return seen if seen == sent else None

    seen = wait_for(f"Prometheus reports the verdicts sent {sent}", counted, prometheus.log)
    assert seen["RELIABLE"] + seen["FLAGGED"] == len(inputs)

    flagged_kinds = prometheus.query(
        'sum by (kind) (gradsentry_verdicts_total{verdict="FLAGGED"}) > 0'
    )
    assert {row["metric"]["kind"] for row in flagged_kinds} <= {"adversarial", "ood", "corrupted"}
    assert sum(float(row["value"][1]) for row in flagged_kinds) == sent["FLAGGED"]

    # A 1 m window keeps the rate non-zero even when the waits above were slow.
    promql = (
        "histogram_quantile(0.99, sum(rate(gradsentry_request_duration_seconds_bucket"
        '{method="Check"}[1m])) by (le))'
    )

    def p99() -> float | None:
        rows = prometheus.query(promql)
        if len(rows) != 1:
            return None
        q = float(rows[0]["value"][1])
        return q if math.isfinite(q) else None

    latency = wait_for("a finite p99 Check latency from Prometheus", p99, prometheus.log)
    assert 0 < latency <= 30.0  # within the histogram's buckets (seconds)
