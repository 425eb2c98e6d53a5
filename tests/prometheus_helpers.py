"""A real Prometheus (Debian's package) scraping a real gradsentry sidecar, for tests.

``start_sidecar()`` starts the bundled demo server on free ports; ``running_prometheus(config,
root)`` checks a config with ``promtool check config`` and runs Prometheus on it (always
stopped afterwards); ``Prometheus.query`` reads its HTTP API. ``send_demo_traffic`` sends the
demo's clean, adversarial, corrupted and OOD inputs spread over several scrapes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import yaml

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.server import SentryServer
from tests.servers import demo_server

WAIT = 60.0  # seconds: bound of every wait on Prometheus
JOB = "gradsentry"  # the scrape job name the alert rules and the dashboard select
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], log: Path | None = None, timeout: float = WAIT
) -> T:
    """Poll ``probe`` until it returns something other than None, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
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
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {last!r})\n{tail}")


class Prometheus:
    """A running Prometheus and its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        """``data`` of a successful API reply (asserts the status)."""
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
        """Terminate (then kill) the server; idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)


def scrape_config(metrics_port: int, job: str = JOB) -> dict[str, Any]:
    """A Prometheus config scraping ``127.0.0.1:metrics_port`` every second."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run Debian's ``promtool`` (asserts it is installed)."""
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install Debian's prometheus package (make system-deps)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


@contextmanager
def running_prometheus(config: dict[str, Any], root: Path) -> Iterator[Prometheus]:
    """Write ``config`` to ``root/prometheus.yml`` (relative rule files resolve in ``root``),
    check it with promtool and run Prometheus on it on a free port until the block ends."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install Debian's prometheus package (make system-deps)"
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check = promtool("check", "config", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    log = root / "prometheus.log"
    with log.open("wb") as out:
        # Port 0: Prometheus binds a free port itself and logs it; picking one here and
        # handing it over would race with any other process binding in between.
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={root / 'data'}",
                "--web.listen-address=127.0.0.1:0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = Prometheus(process, "", log)
    try:
        server.url = f"http://{wait_for('prometheus listening', lambda: _bound(server), log)}"
        yield server
    finally:  # never leave Prometheus running, whatever failed
        server.stop()


def _fail_if_exited(prometheus: Prometheus) -> None:
    if prometheus.process.poll() is not None:
        pytest.fail(
            f"prometheus exited with {prometheus.process.returncode}:\n"
            + prometheus.log.read_text(errors="replace")[-3000:]
        )


_LISTENING = re.compile(rb'msg="Listening on" address=(127\.0\.0\.1:[1-9][0-9]*)')


def _bound(prometheus: Prometheus) -> str | None:
    """host:port Prometheus logged once its listener was bound (fails if it exited)."""
    _fail_if_exited(prometheus)
    found = _LISTENING.search(prometheus.log.read_bytes())
    return found.group(1).decode() if found else None


def target_up(prometheus: Prometheus) -> bool | None:
    """True once a scrape target is up (fails the test if Prometheus exited)."""
    _fail_if_exited(prometheus)
    targets = prometheus.get("/api/v1/targets")["activeTargets"]
    return True if any(t["health"] == "up" for t in targets) else None


@contextmanager
def start_sidecar() -> Iterator[SentryServer]:
    """The bundled demo server on 127.0.0.1 (free gRPC and metrics ports), one torch thread."""
    with demo_server() as (running, _):
        yield running


def tensor_request(x: np.ndarray) -> pb.CheckRequest:
    """x float32 [1, 28, 28]."""
    tensor = pb.Tensor(dtype=pb.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes())
    return pb.CheckRequest(tensor=tensor)


def send_demo_traffic(port: int, rounds: int = 4, pause: float = 1.2) -> dict[str, int]:
    """The demo's clean, adversarial, corrupted and OOD inputs (service.check.demo_inputs) to
    the sidecar on ``port``: one Check per input and one CheckBatch of all of them, spread
    over ``rounds`` scrapes, and one malformed Check (INVALID_ARGUMENT). Returns the
    verdicts counted by input kind and verdict, e.g. {"clean RELIABLE": 3, ...}."""
    from service.check import demo_inputs  # crafts attacks: torch and ART, loaded late

    inputs = demo_inputs()
    counts: dict[str, int] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ReliabilityStub(channel)
        for round_ in range(rounds):
            for d in inputs[round_::rounds]:
                reply = stub.Check(tensor_request(d.image), timeout=30)
                key = f"{d.kind} {pb.Verdict.Name(reply.verdict)}"
                counts[key] = counts.get(key, 0) + 1
            if round_ == 0:
                batch = pb.CheckBatchRequest(requests=[tensor_request(d.image) for d in inputs])
                assert len(stub.CheckBatch(batch, timeout=60).responses) == len(inputs)
                bad = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28]))
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Check(bad, timeout=30)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            time.sleep(pause)  # a scrape or more between rounds, so rate() sees growth
    return counts
