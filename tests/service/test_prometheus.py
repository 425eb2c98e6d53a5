"""A real Prometheus (Debian's package) scrapes a real sidecar on 127.0.0.1 that serves clean
and challenging demo inputs; the verdict counters and a latency quantile are then read back
through Prometheus's HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import torch

from detectors.challenges.registry import ChallengeContext, parse_spec
from detectors.demo import load_demo_model
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import load_config
from service.server import SentryServer, create_server

WAIT = 60.0  # seconds: bound of every wait on Prometheus
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], log: Path | None = None) -> T:
    """Poll ``probe`` until it returns something other than None, at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            got, last = None, exc
        if got is not None:
            return got
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"{what}: not within {WAIT:.0f} s (last error: {last!r})\n{tail}")


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant vector result of ``promql``: [{"metric": {...}, "value": [t, "v"]}]."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SentryServer]:
    torch.set_num_threads(1)
    environ = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": "0", "GRADSENTRY_DEVICE": "cpu"}
    running, _ = create_server(load_config(environ=environ))
    yield running
    running.stop(None).wait(10)


@pytest.fixture(scope="module")
def prometheus(sidecar: SentryServer, tmp_path_factory) -> Iterator[Prometheus]:
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert binary and promtool, (
        "prometheus/promtool not found: install Debian's prometheus package (make system-deps)"
    )
    root = tmp_path_factory.mktemp("prometheus")
    config = root / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: gradsentry\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{sidecar.metrics_port}']\n"
    )
    check = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = root / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(process, f"http://127.0.0.1:{port}", log)
    try:
        yield server
    finally:  # never leave Prometheus running, whatever failed
        server.stop()


def target_up(prometheus: Prometheus) -> bool | None:
    if prometheus.process.poll() is not None:
        pytest.fail(
            f"prometheus exited with {prometheus.process.returncode}:\n"
            + prometheus.log.read_text(errors="replace")[-3000:]
        )
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    return True if any(t["health"] == "up" for t in targets) else None


def tensor_request(x: np.ndarray) -> pb.CheckRequest:
    """x float32 [1, 28, 28]."""
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes())
    return pb.CheckRequest(tensor=tensor)


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
