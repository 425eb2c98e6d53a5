"""Load test of the sidecar: N concurrent gRPC clients for a fixed time, batching on vs off.

For each mode the script starts its own ``gradsentry serve`` process on 127.0.0.1 (the
bundled demo, one torch thread, free ports), lets ``--clients`` concurrent clients — each
with its own channel, all on one event loop — send demo digits back to back for
``--duration`` seconds after a short warm-up, then stops the server with SIGTERM. With
``--rpc check`` (the default) every request is its own ``Check`` call; with ``--rpc
stream`` every client keeps one ``CheckStream`` open and writes its next request when the
last one is answered (still one request out per client). It prints requests/s, p50/p99
latency, the error count, the mean model batch size (from the server's metrics endpoint)
and the CPU the server process and the whole machine used (Linux) for both modes, and the
ratio of their requests/s. ``--rounds N`` alternates the modes N times and reports
medians: on a shared machine other work skews any single run.

``--rpc oip`` compares transports instead of batching modes: both modes batch, one drives
the Open Inference Protocol's ``ModelInfer`` over gRPC (raw_input_contents, the inputs
tritonclient sends, on the generated stubs), the other gradsentry.v1 ``Check``, with the
same inputs; the ratio is OIP over v1 (``--check`` target 0.9 unless ``--target`` says
otherwise). ``--control`` runs v1 ``Check`` on both sides instead: an A/A control, whose
per-round ratios show how far one round strays on this machine when nothing differs.

    python benchmarks/load.py [--clients 16] [--duration 20] [--rounds 1] [--json FILE]
                              [--rpc check|stream|oip] [--control] [--check]
                              [--model demo|efficientnet-lite0]

``--model efficientnet-lite0`` serves the pretrained ImageNet example instead
(``detectors.examples.efficientnet``: eager factory + state dict, its smoke-test bundle,
1,000 labels) and sends foolbox's 20 photos as float32 tensors [3, 224, 224]; at this
size the model and the probe dominate and fixed per-request costs do not.

Batching on is the configured ``max_batch_size`` / ``max_delay_ms``; batching off is
``max_delay_ms: 0`` (every input alone in its batch, still through the queue). Both use
``max_workers = max(64, 4 * clients)`` calls at once so that every client can be waiting on
the model at once. ``--check`` exits 1 unless batching on reaches ``--target`` times the
requests/s of batching off with zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detectors.demo import ARTIFACTS  # noqa: E402
from service._proto.gradsentry.v1 import reliability_pb2 as pb  # noqa: E402
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc  # noqa: E402
from service._proto.inference import grpc_predict_v2_pb2 as oip_pb  # noqa: E402
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc  # noqa: E402
from service.engine.batcher import COMPUTE_STAGES  # noqa: E402
from service.event_loop import new_loop  # noqa: E402

MAX_DURATION = 300.0  # seconds per mode: the run is bounded whatever is asked
# A benchmark stream lives for one mode's warm-up and window (each at most 60 / 300 s).
STREAM_TIMEOUT = MAX_DURATION + 120.0
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Outcome:
    """One mode's measurements (latencies in milliseconds)."""

    mode: str
    clients: int
    seconds: float
    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float
    server_cpu_cores: float
    machine_cpu_cores: float
    error_codes: dict[str, int]
    # Share of the time the model computed (gradsentry's stage metrics; NaN elsewhere) and
    # the server process tree's voluntary thread switches per call (Linux).
    model_busy: float = float("nan")
    switches_per_call: float = float("nan")
    calls_made: int = 0  # warm-up included
    # CPU milliseconds the server process alone (gRPC, decoding, batching: not the model
    # worker) spent per call made: the transport's own cost, to compare side by side
    # (Linux).
    front_cpu_ms_per_call: float = float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan"), float("nan")
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def task_files(pid: int, name: str) -> list[str]:
    """The text of ``/proc/PID/task/*/NAME`` for every thread of ``pid`` alive while read
    (a short-lived thread, such as a metrics scrape's, may end mid-read: it is skipped).
    OSError when the process itself is gone."""
    texts = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            texts.append((task / name).read_text())
        except OSError:
            continue
    return texts


def process_tree(pid: int) -> list[int]:
    """Process ``pid`` and its live descendants (a model worker, TorchServe's workers)."""
    try:
        children = [int(c) for text in task_files(pid, "children") for c in text.split()]
    except OSError:
        return [pid]
    return [pid, *(p for c in children for p in process_tree(c))]


def process_cpu(pid: int, tree: bool = True) -> float:
    """CPU seconds (user + system) process ``pid`` and (``tree``) its live children used so
    far (Linux; NaN elsewhere)."""
    total = 0.0
    for p in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def process_switches(pid: int) -> float:
    """Voluntary context switches of every thread of ``pid`` and its live children so far
    (a thread waking another and going to sleep: the cost of hand-offs; Linux)."""
    try:
        statuses = [text for p in process_tree(pid) for text in task_files(p, "status")]
    except OSError:
        return float("nan")
    return float(
        sum(
            int(line.split()[1])
            for text in statuses
            for line in text.splitlines()
            if line.startswith("voluntary_ctxt_switches:")
        )
    )


def demo_requests() -> list[pb.CheckRequest]:
    """The demo's sample digits as float32 tensor requests [1, 28, 28]."""
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    return [
        pb.CheckRequest(
            tensor=pb.Tensor(dtype=pb.FLOAT32, shape=[1, 28, 28], data=img.astype("<f4").tobytes())
        )
        for img in images
    ]


def efficientnet_setup(workdir: Path) -> tuple[dict[str, object], list[pb.CheckRequest]]:
    """Server settings and requests for the pretrained EfficientNet-Lite0 example."""
    import torch
    from PIL import Image

    from detectors.examples import efficientnet as example

    weights = workdir / "efficientnet-lite0.pt"
    torch.save(example.build_pretrained().state_dict(), weights)
    settings: dict[str, object] = {
        "model_format": "eager",
        "model_factory": "detectors.examples.efficientnet:build",
        "model_weights": str(weights),
        "bundle": str(example.BUNDLE),
        "input_shape": [3, example.IMAGE_SIZE, example.IMAGE_SIZE],
        "input_range": [0.0, 1.0],
        "labels": example.labels(),
    }
    requests = []
    for path in example.photos(workdir / "photos"):
        with Image.open(path) as img:
            x = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        requests.append(
            pb.CheckRequest(
                tensor=pb.Tensor(
                    dtype=pb.FLOAT32, shape=list(x.shape), data=x.astype("<f4").tobytes()
                )
            )
        )
    return settings, requests


class Server:
    """A ``gradsentry serve`` subprocess with the given config overrides."""

    def __init__(self, settings: dict[str, object], workdir: Path) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "metrics_port": self.metrics_port,
            "device": "cpu",
            **settings,
        }
        path = workdir / f"server-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / f"server-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSENTRY_")}
        env["OMP_NUM_THREADS"] = "1"  # one torch thread: the clients need the other core
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--config", str(path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_serving()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not SERVING after {START_TIMEOUT:.0f} s")

    def model_counters(self) -> tuple[float, float, float]:
        """(sum, count) of the server's ``gradsentry_batch_size`` histogram and the seconds
        its model spent computing (the compute stages of
        ``gradsentry_stage_duration_seconds``)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        batch: dict[str, float] = {}
        compute = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name == "gradsentry_batch_size":
                    batch[sample.name] = sample.value
                elif (
                    family.name == "gradsentry_stage_duration_seconds"
                    and sample.name.endswith("_sum")
                    and sample.labels.get("stage") in COMPUTE_STAGES
                ):
                    compute += sample.value
        return (
            batch.get("gradsentry_batch_size_sum", 0.0),
            batch.get("gradsentry_batch_size_count", 0.0),
            compute,
        )

    def stop(self) -> int:
        """SIGTERM (graceful drain), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


# ``calls(channel)`` -> the coroutine function one client awaits with its running request
# index (grpc.aio stubs' calls are awaitable); if it has an async ``close()``, the client
# awaits it when it stops (``StreamCaller``).
Calls = Callable[[grpc.aio.Channel], Callable[[int], Awaitable[object]]]


def check_calls(requests: list[pb.CheckRequest]) -> Calls:
    """Clients calling Reliability.Check on ``requests`` in turn."""

    def bind(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        check = pb_grpc.ReliabilityStub(channel).Check
        return lambda i: check(requests[i % len(requests)], timeout=30)

    return bind


class StreamCaller:
    """One client's ``CheckStream``: each call writes one request and reads its answer, so
    the client still has one request out at a time. A failed message ends the stream (the
    server closes it with that error); the next call opens a new one. ``close`` ends the
    stream cleanly (``drive`` awaits it when the client stops)."""

    def __init__(self, channel: grpc.aio.Channel, requests: list[pb.CheckRequest]) -> None:
        self._stub = pb_grpc.ReliabilityStub(channel)
        self._requests = requests
        self._call: grpc.aio.StreamStreamCall | None = None

    async def __call__(self, i: int) -> pb.CheckResponse:
        if self._call is None:
            self._call = self._stub.CheckStream(timeout=STREAM_TIMEOUT)
        call = self._call
        try:
            await call.write(self._requests[i % len(self._requests)])
            response = await call.read()
        except grpc.RpcError:
            self._call = None
            raise
        if response is grpc.aio.EOF:  # the server answers every message or fails the stream
            raise RuntimeError(f"the server ended a stream with {await call.code()} mid-call")
        return response

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        try:
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass  # nothing is out: the stream ends once the server has read the end
        except grpc.RpcError:
            pass  # after the window: how the stream ends counts for nothing


def stream_calls(requests: list[pb.CheckRequest]) -> Calls:
    """Clients sending ``requests`` in turn on one Reliability.CheckStream each."""
    return lambda channel: StreamCaller(channel, requests)


def infer_request(request: pb.CheckRequest) -> oip_pb.ModelInferRequest:
    """A FLOAT32 CheckRequest's input as an OIP ModelInferRequest with raw contents."""
    infer = oip_pb.ModelInferRequest(model_name="gradsentry")
    infer.inputs.add(name="input", datatype="FP32", shape=[1, *request.tensor.shape])
    infer.raw_input_contents.append(request.tensor.data)
    return infer


def oip_calls(requests: list[pb.CheckRequest]) -> Calls:
    """Clients calling the OIP's ModelInfer on ``requests`` in turn (every default output:
    logits, probabilities, score, flagged, kind)."""
    infers = [infer_request(r) for r in requests]

    def bind(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        infer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        return lambda i: infer(infers[i % len(infers)], timeout=30)

    return bind


OIP_PAIR = ("oip ModelInfer", "v1 Check")
RPC_CALLS: dict[str, Callable[[list[pb.CheckRequest]], Calls]] = {
    "check": check_calls,
    "stream": stream_calls,
    "oip": oip_calls,
}


@dataclass
class _Tally:
    """What the clients of one ``drive`` recorded."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    codes: dict[str, int] = field(default_factory=dict)  # failed calls by status code
    made: int = 0  # every call, warm-up included


async def _client(
    address: str, k: int, clients: int, call_with: Calls, start: float, end: float, tally: _Tally
) -> None:
    """Client ``k``: its own channel, one call at a time until ``end``; then the caller's
    ``close`` if it has one (a stream's end)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = call_with(channel)
        i = k
        try:
            while (t0 := time.monotonic()) < end:
                code = "OK"
                try:
                    await call(i)
                except grpc.RpcError as exc:
                    code = exc.code().name
                t1 = time.monotonic()
                i += clients
                tally.made += 1
                if t0 >= start and t1 <= end:
                    if code == "OK":
                        tally.latencies.append(t1 - t0)
                    else:
                        tally.codes[code] = tally.codes.get(code, 0) + 1
        finally:
            close = getattr(call, "close", None)
            if close is not None:
                await close()


def drive(
    address: str, clients: int, warmup: float, duration: float, calls: Calls | None = None
) -> Outcome:
    """``clients`` concurrent clients, each with its own channel, calling back to back
    (``calls``; default Check on the demo digits); only calls that start after the warm-up
    and end before its end + ``duration`` are counted.

    The clients are coroutines on one event loop (uvloop's when installed), as a load
    generator written for the job runs them: 16 Python threads each driving a blocking
    channel spend a share of the machine's CPU on handing the interpreter lock around,
    which the server under test then lacks. Their channels share one TCP connection (gRPC
    pools connections to the same target), as ghz's clients do by default.
    """
    call_with = calls if calls is not None else check_calls(demo_requests())
    tally = _Tally()

    async def run_all() -> None:
        start = time.monotonic() + warmup
        end = start + duration
        await asyncio.gather(
            *(_client(address, k, clients, call_with, start, end, tally) for k in range(clients))
        )

    loop = new_loop()
    try:
        loop.run_until_complete(run_all())
    finally:
        loop.close()
    lat = np.asarray(tally.latencies) * 1e3
    n_err = sum(tally.codes.values())
    return Outcome(
        mode="",
        clients=clients,
        seconds=duration,
        requests=len(lat) + n_err,
        errors=n_err,
        requests_per_second=len(lat) / duration,
        p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        mean_batch_size=float("nan"),
        server_cpu_cores=float("nan"),
        machine_cpu_cores=float("nan"),
        error_codes=dict(tally.codes),
        calls_made=tally.made,
    )


def measure(name: str, pid: int, run: Callable[[], Outcome]) -> Outcome:
    """``run()``'s outcome named ``name``, with the CPU that process ``pid`` and its
    children (a model worker, TorchServe's workers) and the whole machine used meanwhile."""
    cpu0, machine0, t0 = process_cpu(pid), machine_cpu(), time.monotonic()
    front0 = process_cpu(pid, tree=False)
    switches0 = process_switches(pid)
    outcome = run()
    switches1 = process_switches(pid)
    front1 = process_cpu(pid, tree=False)
    cpu1, machine1, t1 = process_cpu(pid), machine_cpu(), time.monotonic()
    # Cores in use on average: busy CPU seconds over wall seconds (whole machine: busy
    # share of all CPU time times the number of CPUs).
    cores = os.cpu_count() or 1
    machine = cores * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1] or float("nan"))
    return replace(
        outcome,
        mode=name,
        server_cpu_cores=(cpu1 - cpu0) / (t1 - t0),
        machine_cpu_cores=machine,
        # Warm-up calls switch threads too: per call started in the whole run.
        switches_per_call=(switches1 - switches0) / max(outcome.calls_made, 1),
        front_cpu_ms_per_call=1000 * (front1 - front0) / max(outcome.calls_made, 1),
    )


def run_mode(
    mode: str,
    settings: dict[str, object],
    args: argparse.Namespace,
    workdir: Path,
    calls: Calls | None = None,
) -> Outcome:
    """Start a server with ``settings``, drive it with ``calls`` (default: Check), stop it:
    its Outcome."""
    server = Server(settings, workdir)
    try:
        before, t0 = server.model_counters(), time.monotonic()
        outcome = measure(
            mode,
            server.proc.pid,
            lambda: drive(server.address, args.clients, args.warmup, args.duration, calls),
        )
        after, t1 = server.model_counters(), time.monotonic()
    finally:
        code = server.stop()
    if code != 0:
        print(f"warning: {mode} server exited with {code}", file=sys.stderr)
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
    busy = (after[2] - before[2]) / (t1 - t0)
    return replace(outcome, mean_batch_size=mean_batch, model_busy=busy)


def median_of(outcomes: list[Outcome]) -> Outcome:
    """The run with the median requests/s (the lower middle one for an even count)."""
    ranked = sorted(outcomes, key=lambda o: o.requests_per_second)
    return ranked[(len(ranked) - 1) // 2]


def add_load_arguments(parser: argparse.ArgumentParser, per: str, target: float) -> None:
    """The client-load options both load benchmarks share (``per``: "mode" or "server")."""
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=20.0, help=f"seconds per {per} (20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first (2)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations (1)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching on (32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="batching on (5)")
    parser.add_argument("--target", type=float, default=target, help=f"--check ratio ({target:g})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def check_load_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options outside the bounded ranges (parser.error exits 2)."""
    if args.clients < 1:
        parser.error("--clients must be >= 1")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds")
    if not 0 <= args.warmup <= 60:
        parser.error("--warmup must be in [0, 60] seconds")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be in 1..10")
    if args.max_batch_size < 1 or args.max_delay_ms < 0:
        parser.error("--max-batch-size must be >= 1 and --max-delay-ms >= 0")


def report(
    runs: dict[str, list[Outcome]], args: argparse.Namespace, top: str, bottom: str, what: str
) -> int:
    """Print every run and the ratio of the median requests/s of ``top`` over ``bottom``
    (described as ``what``); write ``--json``; the exit code ``--check`` asks for."""
    width = max(len(name) for name in runs) + 2
    header = f"{'':<{width}}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}"
    print(
        f"\n{header}{'server CPU':>12}{'machine CPU':>13}{'model busy':>12}{'switches':>10}"
        f"{'front ms/call':>15}"
    )
    for outcomes in runs.values():
        for r in outcomes:
            print(
                f"{r.mode:<{width}}{r.requests_per_second:>9.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                f"{r.errors:>8d}{r.mean_batch_size:>7.1f}{r.server_cpu_cores:>12.2f}"
                f"{r.machine_cpu_cores:>13.2f}{r.model_busy:>12.0%}{r.switches_per_call:>10.1f}"
                f"{r.front_cpu_ms_per_call:>15.3f}"
            )
            if r.error_codes:
                print(f"{'':<{width}}errors by code: {r.error_codes}")
    num, den = median_of(runs[top]), median_of(runs[bottom])
    ratio = num.requests_per_second / den.requests_per_second if den.requests_per_second else 0.0
    errors = sum(r.errors for outcomes in runs.values() for r in outcomes)
    which = "median " if args.rounds > 1 else ""
    print(
        f"ratio {what} ({which}requests/s): {ratio:.2f}x; errors: {errors} "
        f"(target >= {args.target:g}x with 0 errors; CPU in cores of {os.cpu_count()})"
    )
    # Each round's two runs follow each other: their ratio sees the least drift, and the
    # spread over rounds shows how far one round can be trusted on this machine.
    pairs = [
        a.requests_per_second / b.requests_per_second
        for a, b in zip(runs[top], runs[bottom], strict=True)
        if b.requests_per_second
    ]
    if len(pairs) > 1:
        print(
            f"per round: {min(pairs):.2f}x - {max(pairs):.2f}x "
            f"(median {float(np.median(pairs)):.2f}x over {len(pairs)} rounds)"
        )
    if args.json:
        payload = {
            "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
            "ratio": ratio,
            "round_ratios": pairs,
            "errors": errors,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    met = ratio >= args.target and errors == 0
    return 0 if met or not args.check else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, "mode", target=0.0)
    parser.add_argument(
        "--rpc",
        choices=sorted(RPC_CALLS),
        default="check",
        help="what each client calls: one Check per request, or one CheckStream per client "
        "with one request out at a time, or OIP ModelInfer against Check, both batching "
        "(check)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="with --rpc oip: v1 Check on both sides (an A/A control: the spread the "
        "per-round ratio shows on this machine when nothing differs)",
    )
    parser.add_argument(
        "--model",
        choices=["demo", "efficientnet-lite0"],
        default="demo",
        help="the bundled MNIST demo, or the pretrained ImageNet EfficientNet-Lite0 (demo)",
    )
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)
    if args.control and args.rpc != "oip":
        parser.error("--control compares v1 Check with itself in place of --rpc oip's pair")
    if args.target == 0.0:  # not given: each comparison's own bar
        args.target = 0.9 if args.rpc == "oip" else 3.0

    common = {
        "max_workers": max(64, 4 * args.clients),
        "queue_size": max(256, 4 * args.clients),
    }
    modes = {
        "batching on": {
            **common,
            "max_batch_size": args.max_batch_size,
            "max_delay_ms": args.max_delay_ms,
        },
        "batching off": {**common, "max_batch_size": args.max_batch_size, "max_delay_ms": 0},
    }
    runs: dict[str, list[Outcome]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="gradsentry-load-") as tmp:
        requests = demo_requests()
        if args.model == "efficientnet-lite0":
            model_settings, requests = efficientnet_setup(Path(tmp))
            modes = {mode: {**model_settings, **s} for mode, s in modes.items()}
        calls = {mode: RPC_CALLS[args.rpc](requests) for mode in modes}
        if args.rpc == "oip":  # transports side by side, both batching
            on = modes["batching on"]
            top, bottom = ("v1 Check A", "v1 Check B") if args.control else OIP_PAIR
            first = check_calls(requests) if args.control else oip_calls(requests)
            modes = {top: on, bottom: on}
            calls = {top: first, bottom: check_calls(requests)}
            runs = {mode: [] for mode in modes}
        for i in range(args.rounds):
            for mode, settings in modes.items():
                shown = {k: v for k, v in settings.items() if k != "labels"}
                print(
                    f"[{i + 1}/{args.rounds}] {mode}: {shown}, {args.clients} clients "
                    f"({args.rpc}), {args.duration:g} s",
                    flush=True,
                )
                runs[mode].append(run_mode(mode, settings, args, Path(tmp), calls[mode]))
    if args.rpc == "oip":
        return report(runs, args, top, bottom, f"{top} / {bottom}")
    return report(runs, args, "batching on", "batching off", f"on / off ({args.rpc})")


if __name__ == "__main__":
    raise SystemExit(main())
