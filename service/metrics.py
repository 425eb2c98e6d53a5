"""Prometheus metrics of the sidecar, on an injected registry, and their HTTP endpoint.

``Metrics(registry)`` registers every metric on ``registry`` (never the process-global
one, so several servers and tests can live in one process). Names follow Prometheus
conventions: counters end in ``_total``, durations are ``_seconds``. Who records what:

- the gRPC interceptor: ``gradsentry_requests_total``, ``gradsentry_request_duration_seconds``
  and ``gradsentry_requests_in_flight`` for every RPC;
- the servicer: stage "decode" per input and ``observe_result`` per scored input;
- the batcher (it runs the model batches): stage "queue" per input (submit to batch start),
  stages "forward", "backward" (backward pass and per-layer norms), "statistics" and
  "detector" once per batch, the batch size and the queue depth.

The registry also carries the standard ``process_*`` (memory, CPU, open files) and
``python_info`` collectors. ``MetricsHTTPServer.start(metrics.registry, host, port)`` serves
the text exposition format on ``http://host:port/metrics`` (port 0 picks a free port).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:  # only for the annotation: metrics need no torch at import time
    from service.engine.pipeline import BasePipeline

NAMESPACE = "gradsentry"
STAGES: tuple[str, ...] = ("decode", "queue", "forward", "backward", "statistics", "detector")
NO_KIND = "none"  # the kind label of RELIABLE verdicts (and of detectors without kinds)
UNKNOWN_METHOD = "unknown"  # service/method label of calls to methods the server lacks

# Whole calls: a Check is a few milliseconds on CPU, a large CheckBatch or stream seconds.
REQUEST_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# One stage of one input or batch: decoding a tensor takes microseconds.
STAGE_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# P(challenging) in [0, 1]; calibrated thresholds sit low (around 0.01 for the demo), so the
# low end is resolved finely.
SCORE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0,
)  # fmt: skip


class GrpcCoreCollector:
    """gRPC core's own count of calls for one server, from channelz (read at each scrape):
    ``gradsentry_grpc_calls_started_total`` and ``gradsentry_grpc_calls_failed_total``.

    They include the calls gRPC ends itself before any handler or interceptor runs: a
    message over ``max_message_bytes``, a malformed HTTP/2 stream. Those never reach
    ``gradsentry_requests_total``, so ``calls_started - sum(requests_total)`` is what gRPC
    refused by itself (plus the calls in flight). ``server_id`` is the channelz id of the
    server (``channelz_server_ids``)."""

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id

    def collect(self) -> Iterator[Metric]:
        data = _channelz_server(self.server_id)
        if data is None:
            return
        for name, field, text in (
            ("started", "callsStarted", "Calls gRPC core received, refused by it or not."),
            ("failed", "callsFailed", "Calls that ended with a status other than OK."),
        ):
            family = CounterMetricFamily(f"{NAMESPACE}_grpc_calls_{name}", text)
            family.add_metric([], float(data.get(field, 0)))
            yield family


def channelz_server_ids() -> set[int]:
    """The channelz ids of every gRPC server in this process."""
    return {int(s["ref"]["serverId"]) for s in _channelz_servers()}


def _channelz_servers() -> list[dict[str, Any]]:
    # The functions grpcio-channelz serves from; channelz is on by default in gRPC core.
    from grpc._cython import cygrpc

    try:
        return list(json.loads(cygrpc.channelz_get_servers(0)).get("server", []))
    except (ValueError, RuntimeError):
        return []


def _channelz_server(server_id: int) -> dict[str, Any] | None:
    for server in _channelz_servers():
        if int(server["ref"]["serverId"]) == server_id:
            return dict(server.get("data", {}))
    return None


class MetricsError(ValueError):
    """A metric was recorded with an invalid label value (a programming error)."""


def split_method(full_method: str) -> tuple[str, str]:
    """gRPC method path "/package.Service/Method" -> ("package.Service", "Method")."""
    service, sep, method = full_method.lstrip("/").rpartition("/")
    if not sep or not service or not method:
        return UNKNOWN_METHOD, UNKNOWN_METHOD
    return service, method


class Metrics:
    """Every metric of one server, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        ns = NAMESPACE
        self.requests = Counter(
            "requests",
            "gRPC calls finished, by service, method and status code.",
            ["service", "method", "code"],
            namespace=ns,
            registry=registry,
        )
        self.request_duration = Histogram(
            "request_duration_seconds",
            "Wall time of gRPC calls from the server's view, by service and method.",
            ["service", "method"],
            namespace=ns,
            registry=registry,
            buckets=REQUEST_BUCKETS,
        )
        self.in_flight = Gauge(
            "requests_in_flight",
            "gRPC calls being handled now, by service and method.",
            ["service", "method"],
            namespace=ns,
            registry=registry,
        )
        self.verdicts = Counter(
            "verdicts",
            'Scored inputs by verdict and most likely challenge kind ("none" when RELIABLE).',
            ["verdict", "kind"],
            namespace=ns,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "stage_duration_seconds",
            "Time per stage: decode and queue per input; forward, backward (with per-layer "
            "norms), statistics and detector per model batch.",
            ["stage"],
            namespace=ns,
            registry=registry,
            buckets=STAGE_BUCKETS,
        )
        self.batch_size = Histogram(
            "batch_size",
            "Inputs per model batch.",
            namespace=ns,
            registry=registry,
            buckets=BATCH_BUCKETS,
        )
        self.queue_depth = Gauge(
            "queue_depth",
            "Inputs waiting for the model.",
            namespace=ns,
            registry=registry,
        )
        # Alerts and dashboards read the depth as a fraction of this; 0 until the server sets it.
        self.queue_capacity = Gauge(
            "queue_capacity",
            "Inputs the queue holds at most (queue_size); beyond it calls are refused.",
            namespace=ns,
            registry=registry,
        )
        self.score = Histogram(
            "score",
            "Detector score per input: the probability that the input is challenging.",
            namespace=ns,
            registry=registry,
            buckets=SCORE_BUCKETS,
        )
        self.threshold = Gauge(
            "detector_threshold",
            "Score at or above which an input is FLAGGED.",
            namespace=ns,
            registry=registry,
        )
        self.info = Info(
            "model",
            "The served model and detector bundle.",
            namespace=ns,
            registry=registry,
        )
        # Every stage and verdict is exported from the start (at 0), so dashboards and
        # rate() see the series before the first observation (FLAGGED per kind: set_info).
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        self.verdicts.labels(verdict="RELIABLE", kind=NO_KIND)
        # Memory, CPU and open files of the server process (Linux), and the Python version.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    # --- calls (interceptor) ---
    def _child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: the per-call metrics are recorded on
        every request, and prometheus-client's own lookup validates and locks each time."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        """One finished call: ``method`` is the gRPC path "/package.Service/Method",
        ``code`` a status code name ("OK", "INVALID_ARGUMENT", ...)."""
        service, name = split_method(method)
        self._child(self.requests, service, name, code).inc()
        self._child(self.request_duration, service, name).observe(seconds)

    def in_flight_gauge(self, method: str) -> Any:
        """The ``gradsentry_requests_in_flight`` gauge of ``method`` (inc / dec it)."""
        return self._child(self.in_flight, *split_method(method))

    # --- batches (batcher / pipeline runner) ---
    def set_queue_depth(self, n: int) -> None:
        """Inputs waiting for the model right now."""
        self.queue_depth.set(n)

    def set_queue_capacity(self, n: int) -> None:
        """The most inputs the queue holds (the server's ``queue_size``)."""
        self.queue_capacity.set(n)

    def observe_batch(self, size: int) -> None:
        """One model batch of ``size`` inputs ran."""
        self.batch_size.observe(size)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Seconds spent in ``stage`` (one of ``STAGES``)."""
        if stage not in STAGES:
            raise MetricsError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
        self._child(self.stage_duration, stage).observe(seconds)

    # --- results (servicer) ---
    def observe_result(self, kind: str | None, flagged: bool, score: float) -> None:
        """One scored input: its verdict, most likely kind (counted only when flagged) and
        score."""
        verdict = "FLAGGED" if flagged else "RELIABLE"
        label = (kind or NO_KIND) if flagged else NO_KIND
        self._child(self.verdicts, verdict, label).inc()
        self.score.observe(score)

    # --- static facts ---
    def set_info(
        self,
        *,
        model_fingerprint: str,
        threshold: float,
        target_fpr: float,
        strategy: str,
        kinds: list[str],
        versions: Mapping[str, str],
    ) -> None:
        """Model and detector facts as ``gradsentry_model_info`` labels (value 1) and the
        threshold as ``gradsentry_detector_threshold``. ``versions`` keys become labels
        "<name>_version" (non-alphanumerics replaced by "_")."""
        labels = {
            "model_fingerprint": model_fingerprint,
            "threshold": repr(float(threshold)),
            "target_fpr": repr(float(target_fpr)),
            "strategy": strategy,
            "kinds": ",".join(kinds),
        }
        for name, version in sorted(versions.items()):
            key = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
            labels[f"{key}_version"] = str(version)
        self.info.info(labels)
        self.threshold.set(threshold)
        for kind in kinds or [NO_KIND]:
            self.verdicts.labels(verdict="FLAGGED", kind=kind)


class MetricsHTTPServer:
    """The metrics endpoint: a daemon thread serving ``registry`` on ``host:port``."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsHTTPServer:
        """Listen on ``host:port`` (0 picks a free port); OSError when it cannot bind."""
        httpd, thread = start_http_server(port, addr=host, registry=registry)
        return cls(httpd, thread)

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def model_info(pipeline: BasePipeline) -> dict[str, Any]:
    """``Metrics.set_info`` keyword arguments for the pipeline's model and detector bundle,
    with the versions of the serving stack."""
    manifest = pipeline.manifest
    versions = {"python": platform.python_version()}
    for dist in ("gradsentry", "torch", "onnxruntime", "grpcio"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return {
        "model_fingerprint": str(manifest["model_fingerprint"]),
        "threshold": float(manifest["threshold"]),
        "target_fpr": float(manifest["target_fpr"]),
        "strategy": str(manifest.get("strategy", "")),
        "kinds": pipeline.kinds,
        "versions": versions,
    }
