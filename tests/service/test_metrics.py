"""Prometheus metrics: the Metrics class on its own registry, and the live endpoint of a real
server on 127.0.0.1 after it served known traffic (counts, labels, promtool)."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import load_config
from service.metrics import STAGES, Metrics, MetricsError
from service.server import BindError, SentryServer, create_server
from tests.servers import demo_server, tensor_request

RELIABILITY = "gradsentry.v1.Reliability"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode("utf-8")


def parse(text: str) -> Samples:
    """Exposition text -> {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the series does not exist (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def sum_of(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# --- the Metrics class on an injected registry -------------------------------------------


def test_metrics_live_on_the_injected_registry_only() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma, mb = Metrics(a), Metrics(b)  # two servers in one process must not clash
    ma.observe_request("/gradsentry.v1.Reliability/Check", "OK", 0.01)
    ma.observe_result("ood", flagged=True, score=0.9)
    ma.observe_result("ood", flagged=False, score=0.001)
    key = {"service": RELIABILITY, "method": "Check", "code": "OK"}
    assert a.get_sample_value("gradsentry_requests_total", key) == 1.0
    assert b.get_sample_value("gradsentry_requests_total", key) is None
    assert mb.registry is b
    # A RELIABLE input has no kind: its most likely kind is not a finding.
    assert a.get_sample_value("gradsentry_verdicts_total", {"verdict": "FLAGGED", "kind": "ood"})
    assert (
        a.get_sample_value("gradsentry_verdicts_total", {"verdict": "RELIABLE", "kind": "none"})
        == 1.0
    )
    assert a.get_sample_value("gradsentry_score_count") == 2.0
    assert REGISTRY.get_sample_value("gradsentry_score_count") is None


def test_stage_names_are_checked() -> None:
    # (The in-flight gauge's return to 0 after failed calls is checked on a live server.)
    metrics = Metrics(CollectorRegistry())
    with pytest.raises(MetricsError, match="unknown stage 'backprop'"):
        metrics.observe_stage("backprop", 0.1)


# --- the live endpoint of a real server ----------------------------------------------------


@pytest.fixture(scope="module")
def live_server() -> Iterator[tuple[SentryServer, grpc.Channel]]:
    """A server of its own (exact counts need traffic no other test adds)."""
    with (
        demo_server(GRADSENTRY_QUEUE_SIZE="200") as (running, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield running, channel


@pytest.fixture(scope="module")
def traffic(live_server, samples) -> tuple[Samples, list[pb.CheckResponse], str]:
    """Known traffic, then one scrape: (samples, responses to scored inputs, raw text)."""
    running, channel = live_server
    stub = pb_grpc.ReliabilityStub(channel)
    images, _ = samples
    x = (images[:6].astype(np.float32) / 255.0)[:, None]
    noise = np.random.default_rng(0).uniform(size=(2, 1, 28, 28)).astype(np.float32)
    responses = [stub.Check(tensor_request(x[i]), timeout=30) for i in range(4)]
    responses += [stub.Check(tensor_request(noise[i]), timeout=30) for i in range(2)]
    batch = pb.CheckBatchRequest(requests=[tensor_request(x[i]) for i in (4, 5)])
    responses += list(stub.CheckBatch(batch, timeout=30).responses)
    responses += list(stub.CheckStream(iter([tensor_request(x[0])]), timeout=30))
    bad = pb.CheckRequest(tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 27], data=b"\0" * 4))
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(bad, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = channel.unary_unary("/nope.v1.Nothing/Missing")
    with pytest.raises(grpc.RpcError) as info:
        missing(b"", timeout=30)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    stub.GetInfo(pb.GetInfoRequest(), timeout=30)
    text = scrape_text(running.metrics_port)
    return parse(text), responses, text


def test_requests_are_counted_by_method_and_code(traffic) -> None:
    samples, _, _ = traffic
    total = "gradsentry_requests_total"
    assert value(samples, total, service=RELIABILITY, method="Check", code="OK") == 6
    assert value(samples, total, service=RELIABILITY, method="Check", code="INVALID_ARGUMENT") == 3
    assert value(samples, total, service=RELIABILITY, method="CheckBatch", code="OK") == 1
    assert value(samples, total, service=RELIABILITY, method="CheckStream", code="OK") == 1
    assert value(samples, total, service=RELIABILITY, method="GetInfo", code="OK") == 1
    assert value(samples, total, service="unknown", method="unknown", code="UNIMPLEMENTED") == 1
    assert sum_of(samples, total, code="INTERNAL") == 0
    latency = "gradsentry_request_duration_seconds"
    count = value(samples, f"{latency}_count", service=RELIABILITY, method="Check")
    assert count == 9  # every call, failed ones too
    inf = value(samples, f"{latency}_bucket", service=RELIABILITY, method="Check", le="+Inf")
    assert inf == count
    assert 0 < value(samples, f"{latency}_sum", service=RELIABILITY, method="Check") < 9 * 30
    for method in ("Check", "CheckBatch", "CheckStream", "GetInfo"):
        in_flight = "gradsentry_requests_in_flight"
        assert value(samples, in_flight, service=RELIABILITY, method=method) == 0


def test_verdicts_scores_and_stages_match_the_responses(traffic) -> None:
    samples, responses, _ = traffic
    assert len(responses) == 9
    flagged = [r for r in responses if r.verdict == pb.FLAGGED]
    assert 0 < len(flagged) < len(responses)  # noise is flagged, clean digits are not
    verdicts = "gradsentry_verdicts_total"
    assert value(samples, verdicts, verdict="RELIABLE", kind="none") == 9 - len(flagged)
    for kind in ("adversarial", "ood", "corrupted"):
        expected = sum(pb.Kind.Name(r.kind).lower() == kind for r in flagged)
        assert value(samples, verdicts, verdict="FLAGGED", kind=kind) == expected
    assert value(samples, "gradsentry_score_count") == 9
    assert value(samples, "gradsentry_score_sum") == pytest.approx(
        sum(r.score for r in responses), abs=1e-6
    )
    le_threshold = value(samples, "gradsentry_score_bucket", le="0.01")
    assert le_threshold == sum(r.score <= 0.01 for r in responses)
    stage = "gradsentry_stage_duration_seconds_count"
    # Decode and queue per scored input; model stages once per batch (6 Checks, the
    # CheckBatch's two inputs in one batch, one stream message: 8 batches).
    assert value(samples, stage, stage="decode") == 9
    assert value(samples, stage, stage="queue") == 9
    for name in STAGES[2:]:
        assert value(samples, stage, stage=name) == 8, name
    assert value(samples, "gradsentry_batch_size_count") == 8
    assert value(samples, "gradsentry_batch_size_sum") == 9
    assert value(samples, "gradsentry_queue_depth") == 0


def test_model_info_matches_get_info(live_server, traffic) -> None:
    samples, _, _ = traffic
    info = pb_grpc.ReliabilityStub(live_server[1]).GetInfo(pb.GetInfoRequest(), timeout=30)
    (labels,) = [dict(ls) for (n, ls), v in samples.items() if n == "gradsentry_model_info"]
    assert value(samples, "gradsentry_model_info", **labels) == 1
    assert labels["model_fingerprint"] == info.model_fingerprint
    assert float(labels["threshold"]) == pytest.approx(info.threshold)
    assert float(labels["target_fpr"]) == pytest.approx(info.target_fpr)
    assert labels["kinds"].split(",") == list(info.kinds)
    assert labels["strategy"] and labels["torch_version"] and labels["gradsentry_version"]
    assert value(samples, "gradsentry_detector_threshold") == pytest.approx(info.threshold)
    assert value(samples, "gradsentry_queue_capacity") == live_server[0].plane.batcher.queue_size
    assert value(samples, "process_resident_memory_bytes") > 0


def test_promtool_accepts_the_live_endpoint(traffic) -> None:
    _, _, text = traffic
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (make system-deps)"
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


def test_an_open_stream_is_in_flight(live_server) -> None:
    running, channel = live_server
    stub = pb_grpc.ReliabilityStub(channel)
    inbox: queue.Queue[pb.CheckRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.CheckRequest]:
        while (item := inbox.get(timeout=60)) is not None:
            yield item

    x = np.zeros((1, 28, 28), np.float32)
    inbox.put(tensor_request(x))
    replies = stub.CheckStream(requests(), timeout=60)
    gauge = "gradsentry_requests_in_flight"
    try:
        next(replies)  # the handler is running and has answered once
        samples = parse(scrape_text(running.metrics_port))
        assert value(samples, gauge, service=RELIABILITY, method="CheckStream") == 1
    finally:
        inbox.put(None)
    assert list(replies) == []
    samples = parse(scrape_text(running.metrics_port))
    assert value(samples, gauge, service=RELIABILITY, method="CheckStream") == 0


def test_metrics_port_is_released_on_stop_and_a_busy_one_is_refused() -> None:
    torch.set_num_threads(1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        environ = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": str(taken)}
        with pytest.raises(BindError, match=f"metrics on 127.0.0.1:{taken}"):
            create_server(load_config(environ=environ))
    environ = {"GRADSENTRY_PORT": "0", "GRADSENTRY_METRICS_PORT": "0"}
    running, _ = create_server(load_config(environ=environ))
    port = running.metrics_port
    assert port and port != 0
    assert "gradsentry_model_info{" in scrape_text(port)
    assert running.stop(None).wait(10)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape_text(port)
