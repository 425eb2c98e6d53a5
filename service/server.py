"""The gRPC server: Reliability + OIP + grpc.health.v1 + reflection, with graceful drain.

``create_server(config)`` loads the model and bundle, starts listening (health
NOT_SERVING), runs a warm-up batch and only then reports SERVING; tests bind port 0 and
read the real port from its return value. ``serve(config)`` blocks until SIGTERM/SIGINT,
then reports NOT_SERVING, refuses new calls and stops with ``config.grace_seconds`` for
calls in flight. ``main(argv)`` is the command-line entry (``--config FILE``).

gRPC runs as ``grpc.aio`` on one asyncio event loop in a thread of its own (shared by
every server in the process). A thread per call, as the synchronous server has, adds
thread switches to every call (hand-offs and the interpreter lock passing between
handler threads): CPU the model worker needs. ``SentryServer`` keeps a
synchronous face (``stop``, ``wait_for_termination``) for callers outside the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from detectors.errors import ModelLoadError
from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_pb_grpc
from service.config import ConfigError, ServerConfig, load_config
from service.dataplane.admission import Admission, Limits
from service.dataplane.plane import DataPlane
from service.engine.batcher import Batcher
from service.engine.worker import ProcessPipeline, start_pipeline
from service.event_loop import event_loop, on_loop
from service.interceptors import DecodeInterceptor, ErrorInterceptor, MetricsInterceptor
from service.metrics import (
    GrpcCoreCollector,
    Metrics,
    MetricsHTTPServer,
    channelz_server_ids,
    model_info,
)
from service.priority import lower_threads
from service.security import OPEN_SERVICES, read_token, server_credentials
from service.security import interceptors as security_interceptors
from service.transport.grpc_admission import AdmissionInterceptor
from service.transport.grpc_v1.servicer import ReliabilityServicer
from service.transport.oip_grpc.servicer import SERVICE_NAME as OIP_SERVICE_NAME
from service.transport.oip_grpc.servicer import InferenceServicer
from service.transport.reflection import enable_reflection

if TYPE_CHECKING:  # starlette and uvicorn load only when REST is on
    from service.transport.oip_rest.server import RestServer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Reliability"].full_name
HEALTH_NAMES = ("", SERVICE_NAME, OIP_SERVICE_NAME)
DRAIN_POLL_SECONDS = 0.01
# The drain stops gRPC only once no call has come in for this long: gRPC cancels calls it
# has received but not yet handed over when it stops, and every call that comes in while
# draining is answered (UNAVAILABLE) within milliseconds.
DRAIN_QUIET_SECONDS = 0.25
# When the grace period runs out, the calls still running are ended with UNAVAILABLE; this
# long is left for those answers to go out before gRPC stops.
DRAIN_CUT_SECONDS = 0.5


class BindError(ConfigError):
    """The server could not listen on the configured address (a port in use, an address
    this host does not have): a configuration problem, one line and exit 2 at the CLI."""


class SentryServer:
    """A started server and the parts a graceful stop needs."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        health: health_aio.HealthServicer,
        plane: DataPlane,
        port: int,
        metrics: Metrics | None = None,
        metrics_http: MetricsHTTPServer | None = None,
        rest: RestServer | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.health = health
        self.plane = plane
        self.admission = plane.admission
        self.port = port
        self.metrics = metrics
        self.metrics_http = metrics_http
        self.rest = rest
        self._stopping = threading.Lock()
        self._stop_asked = False
        self._stopped = threading.Event()

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the metrics endpoint (None when it is not served)."""
        return None if self.metrics_http is None else self.metrics_http.port

    @property
    def rest_port(self) -> int | None:
        """The bound port of the OIP REST endpoint (None when it is not served)."""
        return None if self.rest is None else self.rest.port

    def stop(self, grace: float | None) -> threading.Event:
        """Drain, then stop: NOT_SERVING for health checks and every new call refused with
        UNAVAILABLE; every call already admitted is answered (within ``grace`` seconds);
        then the batcher, the model worker and the metrics endpoint stop. Returns an event
        set when all is stopped (the same event when called again). None: stop at once."""
        with self._stopping:
            if self._stop_asked:
                return self._stopped
            self._stop_asked = True
        self.begin_drain()
        grpc_done = asyncio.run_coroutine_threadsafe(self._stop_grpc(grace), event_loop())
        threading.Thread(
            target=self._finish, args=(grpc_done,), name="server-stop", daemon=True
        ).start()
        return self._stopped

    async def _stop_grpc(self, grace: float | None) -> None:
        """Within ``grace``: wait for every admitted call to end, then end the streams that
        never would (health watches, reflection), then wait until no call has come in for
        DRAIN_QUIET_SECONDS (every call gRPC has received has then been answered: gRPC
        would cancel those still waiting for a handler), then stop gRPC with what is left."""
        loop = asyncio.get_running_loop()
        admission = self.admission
        if grace is not None:
            deadline = loop.time() + grace

            def waiting(more: bool) -> bool:
                return more and loop.time() < deadline

            while waiting(admission.busy > 0):
                await asyncio.sleep(DRAIN_POLL_SECONDS)
            if admission.busy > 0:  # the grace ran out: say so, rather than CANCELLED
                admission.cut_all()
                deadline = loop.time() + DRAIN_CUT_SECONDS
            admission.end_open_streams()
            while waiting(
                admission.busy + admission.open_streams.active > 0
                or time.monotonic() - admission.last_call < DRAIN_QUIET_SECONDS
            ):
                await asyncio.sleep(DRAIN_POLL_SECONDS)
            grace = max(deadline - loop.time(), 0.0)
        await self.grpc_server.stop(grace)

    def begin_drain(self) -> None:
        """The first step of ``stop``: health NOT_SERVING (for good), new calls refused with
        UNAVAILABLE while the transport still answers, open streams end at their next read."""
        on_loop(self._begin_drain())

    async def _begin_drain(self) -> None:
        self.admission.begin_drain()
        await self.health.enter_graceful_shutdown()

    def _finish(self, grpc_done: Any) -> None:
        try:
            grpc_done.result()
        except Exception:  # stopping goes on: the batcher and the worker must still end
            log.exception("stopping gRPC failed")
        log.info("gRPC stopped")
        if self.rest is not None:  # its calls were admitted with gRPC's: none is running
            try:
                self.rest.stop()
            except Exception:
                log.exception("stopping the REST server failed")
        self.plane.close()
        if self.metrics_http is not None:  # last: it serves until the last call is counted
            self.metrics_http.stop()
        log.info("stopped")
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until ``stop`` has finished (or ``timeout``); True if it timed out."""
        return not self._stopped.wait(timeout)


async def _build_grpc(
    config: ServerConfig,
    plane: DataPlane,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    credentials: grpc.ServerCredentials | None,
) -> tuple[grpc.aio.Server, health_aio.HealthServicer, int, str]:
    """The gRPC server with every service, bound (not started): (server, health, port,
    error text when binding failed)."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        # No maximum_concurrent_rpcs: it would count health checks with everything else.
        # service.dataplane.admission budgets calls by class, before their messages are read.
        options=[
            # A second server on the same port must fail to start, not share the port.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
    )
    health_servicer = health_aio.HealthServicer()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    pb_grpc.add_ReliabilityServicer_to_server(ReliabilityServicer(plane), server)
    oip_pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:  # every service, OIP too (its files are in a pool of their own)
        enable_reflection(
            server,
            [
                pb.DESCRIPTOR.services_by_name["Reliability"],
                oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                health_pb2.DESCRIPTOR.services_by_name["Health"],
            ],
        )
    address = f"{config.host}:{config.port}"
    problem = _port_taken(config.host, config.port)
    if problem:
        return server, health_servicer, 0, f": {problem}"
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError as exc:
        return server, health_servicer, 0, f": {exc}"
    return server, health_servicer, port, ""


def _port_taken(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound ("" when it can, or when gRPC must resolve the
    host itself), tried with a plain socket first: gRPC core would log its own multi-line
    error before saying it failed."""
    if port == 0:
        return ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return ""
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: past connections in TIME_WAIT do not block, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc.strerror or str(exc)
    return ""


async def _set_health(health_servicer: health_aio.HealthServicer, status: int) -> None:
    """``status`` for the whole server ("") and the Reliability service."""
    for name in HEALTH_NAMES:
        await health_servicer.set(name, status)


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
    admission = Admission(
        Limits(
            max_workers=config.max_workers,
            max_streams=config.max_streams,
            max_open_streams=config.max_open_streams,
            stream_idle_seconds=config.stream_idle_seconds,
            stream_max_seconds=config.stream_max_seconds,
        )
    )
    plane = DataPlane(
        pipeline,
        batcher,
        admission,
        metrics=metrics,
        decode_workers=config.decode_workers,
        decode_budget_seconds=config.decode_budget_seconds,
        model_name=config.model_name,
    )
    # Metrics outermost (every refusal is counted); auth before admission (a call without
    # a token takes no budget); errors mapped for admission's stream timeouts and every
    # handler; request bytes parsed innermost, so a malformed message is a client error.
    interceptors = [
        MetricsInterceptor(metrics),
        *auth,
        ErrorInterceptor(),
        AdmissionInterceptor(admission, open_services=OPEN_SERVICES),
        DecodeInterceptor(),
    ]
    known = channelz_server_ids()
    server, health_servicer, port, error = on_loop(
        _build_grpc(config, plane, interceptors, credentials)
    )
    ours = channelz_server_ids() - known
    if ours:  # gRPC's own call counts, refusals before any handler included
        metrics.registry.register(GrpcCoreCollector(max(ours)))
    if port == 0:
        batcher.close(drain=False)
        pipeline.close()
        raise BindError(f"cannot listen on {config.host}:{config.port}{error}")
    metrics_host = config.metrics_host or config.host
    try:
        metrics_http = MetricsHTTPServer.start(metrics.registry, metrics_host, config.metrics_port)
    except OSError as exc:
        on_loop(server.stop(None))
        batcher.close(drain=False)
        pipeline.close()
        raise BindError(
            f"cannot serve metrics on {metrics_host}:{config.metrics_port}: {exc.strerror or exc}"
        ) from None
    try:
        rest = _start_rest(config, plane)
    except BindError:
        on_loop(server.stop(None))
        metrics_http.stop()
        batcher.close(drain=False)
        pipeline.close()
        raise
    if rest is not None:
        log.info("OIP REST on http://%s:%d/v2", config.rest_host or config.host, rest.port)
    on_loop(server.start())
    log.info("listening on %s:%d; warming up (health NOT_SERVING until done)", config.host, port)
    try:
        warm = pipeline.warm_up()
    except BaseException as exc:
        on_loop(server.stop(None))
        if rest is not None:
            rest.stop()
        metrics_http.stop()
        batcher.close(drain=False)
        pipeline.close()
        if isinstance(exc, Exception):  # the model and bundle cannot serve: a start-up error
            raise ModelLoadError(f"the warm-up batch failed: {exc}") from exc
        raise
    plane.num_classes = len(warm[0].probabilities)
    plane.ready.set()
    on_loop(_set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING))
    log.info("gradsentry serving %s on %s:%d", SERVICE_NAME, config.host, port)
    log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_http.port)
    running = SentryServer(server, health_servicer, plane, port, metrics, metrics_http, rest)
    return running, port


def _start_rest(config: ServerConfig, plane: DataPlane) -> RestServer | None:
    """The OIP REST endpoint when ``config.rest_enabled`` (its modules load only then)."""
    if not config.rest_enabled:
        return None
    from service.transport.oip_rest.app import RestApp
    from service.transport.oip_rest.server import RestServer

    token = read_token(config.auth_token_file) if config.auth_token_file else ""
    app = RestApp(plane, token=token, max_body_bytes=config.max_message_bytes)
    host = config.rest_host or config.host
    try:
        return RestServer.start(
            app.app,
            host,
            config.rest_port,
            config.tls_cert_file,
            config.tls_key_file,
            config.tls_client_ca_file,
        )
    except OSError as exc:
        raise BindError(
            f"cannot serve OIP REST on {host}:{config.rest_port}: {exc.strerror or exc}"
        ) from None


def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully (must run in the main thread).

    The handlers are installed before anything starts: a SIGTERM while the model loads or
    warms up (Kubernetes stops pods that are still starting) lets start-up finish, then
    stops at once with exit 0, instead of killing the process by the default action.
    """
    started: list[SentryServer] = []
    asked: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not started:  # still starting: stop as soon as there is a server to stop
            log.info("signal %d while starting: stopping once started", signum)
            asked.append(signum)
            return
        log.info("signal %d: draining for up to %.1f s", signum, config.grace_seconds)
        started[0].stop(config.grace_seconds)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running, _ = create_server(config)
    started.append(running)
    pipeline = running.plane.pipeline
    # The process is ours alone here (create_server leaves the priority of a process that
    # embeds it, a test run for one, alone: lowering cannot be undone without privileges).
    if isinstance(pipeline, ProcessPipeline):  # every thread exists now: lower them all
        lower_threads(
            config.server_nice, keep=ProcessPipeline.launcher_tids, base=pipeline.launcher_nice
        )
    if asked:  # a signal came before ``started`` held the server
        log.info("signal %d: draining for up to %.1f s", asked[0], config.grace_seconds)
        running.stop(config.grace_seconds)
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
