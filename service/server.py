"""The gRPC server: Reliability + grpc.health.v1 + reflection, with graceful drain.

``create_server(config)`` loads the model and bundle, starts listening (health
NOT_SERVING), runs a warm-up batch and only then reports SERVING; tests bind port 0 and
read the real port from its return value. ``serve(config)`` blocks until SIGTERM/SIGINT,
then reports NOT_SERVING, refuses new calls and stops with ``config.grace_seconds`` for
calls in flight. ``main(argv)`` is the command-line entry (``--config FILE``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.batcher import Batcher
from service.config import ServerConfig, load_config
from service.interceptors import ErrorInterceptor, MetricsInterceptor
from service.metrics import Metrics, MetricsHTTPServer, model_info
from service.priority import lower_threads
from service.security import interceptors as security_interceptors
from service.security import server_credentials
from service.servicer import ReliabilityServicer
from service.worker import ProcessPipeline, start_pipeline

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reliability"].full_name


class BindError(RuntimeError):
    """The server could not listen on the configured address."""


@dataclass
class SentryServer:
    """A started server and the parts a graceful stop needs."""

    grpc_server: grpc.Server
    health: health.HealthServicer
    servicer: ReliabilityServicer
    port: int
    metrics: Metrics | None = None
    metrics_http: MetricsHTTPServer | None = None

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the metrics endpoint (None when it is not served)."""
        return None if self.metrics_http is None else self.metrics_http.port

    def stop(self, grace: float | None) -> threading.Event:
        """NOT_SERVING for health checks, refuse new Reliability calls, then stop with
        ``grace`` seconds for calls in flight. Returns an event set when fully stopped."""
        self.servicer.draining.set()
        self.health.enter_graceful_shutdown()
        stopped = _then_close_batcher(self.grpc_server.stop(grace), self.servicer.batcher)
        return _then_stop_metrics(stopped, self.metrics_http)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it timed out."""
        return self.grpc_server.wait_for_termination(timeout)


def create_server(config: ServerConfig) -> tuple[SentryServer, int]:
    """Load, listen on ``config.host:config.port`` (0 picks a free port), warm up, SERVING."""
    # TLS files and the token are checked before anything heavy is loaded or started.
    credentials = server_credentials(config)
    auth = security_interceptors(config)
    pipeline = start_pipeline(config)
    metrics = Metrics(CollectorRegistry())
    metrics.set_info(**model_info(pipeline))
    metrics.set_queue_capacity(config.queue_size)
    batcher = Batcher(
        pipeline,
        config.max_batch_size,
        config.max_delay_ms,
        config.queue_size,
        metrics=metrics,
        dispatch_when_idle=config.dispatch_when_idle,
    )
    servicer = ReliabilityServicer(pipeline, batcher)
    servicer.metrics = metrics
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="grpc"),
        # Auth inside observability (refusals are counted), outside error mapping.
        interceptors=[
            MetricsInterceptor(metrics),
            *auth,
            ErrorInterceptor(),
        ],
        # Calls beyond max_workers wait for a thread: bound that backlog like the batcher's
        # queue (beyond it gRPC answers RESOURCE_EXHAUSTED) so memory stays bounded.
        maximum_concurrent_rpcs=config.max_workers + config.queue_size,
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
    )
    pb_grpc.add_ReliabilityServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError as exc:
        port, error = 0, f": {exc}"
    else:
        error = ""
    if port == 0:
        batcher.close(drain=False)
        pipeline.close()
        raise BindError(f"cannot listen on {address}{error}")
    try:
        metrics_http = MetricsHTTPServer.start(metrics.registry, config.host, config.metrics_port)
    except OSError as exc:
        batcher.close(drain=False)
        pipeline.close()
        raise BindError(
            f"cannot serve metrics on {config.host}:{config.metrics_port}: {exc}"
        ) from exc
    server.start()
    try:
        pipeline.warm_up()
    except BaseException:
        server.stop(None)
        metrics_http.stop()
        batcher.close(drain=False)
        pipeline.close()
        raise
    if isinstance(pipeline, ProcessPipeline):  # every thread exists now: lower them all
        lower_threads(
            config.server_nice, keep=ProcessPipeline.launcher_tids, base=pipeline.launcher_nice
        )
    servicer.ready.set()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gradsentry serving %s on %s:%d", SERVICE_NAME, config.host, port)
    log.info("metrics on http://%s:%d/metrics", config.host, metrics_http.port)
    running = SentryServer(server, health_servicer, servicer, port, metrics, metrics_http)
    return running, port


def _then_close_batcher(stopped: threading.Event, batcher: Batcher) -> threading.Event:
    """An event set once gRPC has stopped (``stopped``) and then the batcher has answered
    what is still queued, stopped its worker and its pipeline (a model worker process)."""
    done = threading.Event()

    def finish() -> None:
        stopped.wait()
        batcher.close(drain=True)
        batcher.pipeline.close()
        done.set()

    threading.Thread(target=finish, name="batcher-stop", daemon=True).start()
    return done


def _then_stop_metrics(
    stopped: threading.Event, metrics_http: MetricsHTTPServer | None
) -> threading.Event:
    """An event set once gRPC has stopped (``stopped``) and then the metrics endpoint too:
    it serves until the last call has been counted."""
    if metrics_http is None:
        return stopped
    done = threading.Event()

    def finish() -> None:
        stopped.wait()
        metrics_http.stop()
        done.set()

    threading.Thread(target=finish, name="metrics-stop", daemon=True).start()
    return done


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully (must run in the main thread)."""
    running, _ = create_server(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: draining for up to %.1f s", signum, config.grace_seconds)
        running.stop(config.grace_seconds)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> int:
    """``--config FILE`` (optional; GRADSENTRY_* variables override it) -> serve."""
    parser = argparse.ArgumentParser(prog="gradsentry serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(load_config(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
