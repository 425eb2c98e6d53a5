"""TorchServe (forward only) vs gradsentry (forward + confounding backprop + H) on one .mar.

Both serve the demo model from the same TorchServe archive (``build_mar`` in
``benchmarks/torchserve_harness.py``), on this machine, one after the other (never at the
same time), each with one torch thread and its dynamic batching on:

- TorchServe 0.12: one Python worker, the model registered with ``batch_size`` /
  ``max_batch_delay``; clients call its gRPC ``Predictions`` (probabilities back).
- gradsentry: ``gradsentry serve`` with ``model_format: mar`` on the same file,
  ``max_batch_size`` / ``max_delay_ms``; clients call ``Reliability.Check`` (prediction,
  verdict, score back).

The client load is ``benchmarks/load.py``'s: ``--clients`` threads, each with its own
channel, sending the demo digits back to back for ``--duration`` seconds after a warm-up;
only calls inside the window count. Printed per server: requests/s, p50/p99 latency, errors
and the CPU the server's processes used (cores); then the ratio gradsentry / TorchServe in
requests/s. ``--check`` exits 1 unless the ratio reaches ``--target`` (1.0: gradsentry's
checked requests/s at least TorchServe's plain predictions/s) with zero errors.

    python benchmarks/torchserve.py [--clients 16] [--duration 20] [--rounds 1]
                                    [--max-batch-size 32] [--max-delay-ms 5] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import grpc
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import (
    MAX_DURATION,
    Calls,
    Outcome,
    Server,
    drive,
    machine_cpu,
    median_of,
)
from benchmarks.torchserve_harness import (
    TorchServe,
    build_mar,
    inference_protos,
    prediction_request,
)
from detectors.demo import ARTIFACTS

GRADSENTRY, TORCHSERVE = "gradsentry", "torchserve"


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` and its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def predictions_calls(workdir: Path) -> Calls:
    """Clients calling TorchServe's gRPC Predictions on the demo digits in turn."""
    pb2, pb2_grpc = inference_protos(workdir / "ts-protos")
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    requests = [prediction_request(pb2, img[None]) for img in images]

    def bind(channel: grpc.Channel) -> Callable[[int], object]:
        predict = pb2_grpc.InferenceAPIsServiceStub(channel).Predictions
        return lambda i: predict(requests[i % len(requests)], timeout=30)

    return bind


def measure(name: str, pid: int, run: Callable[[], Outcome]) -> Outcome:
    """``run()``'s outcome with the CPU the server process tree and the machine used."""
    cpu0, machine0, t0 = tree_cpu(pid), machine_cpu(), time.monotonic()
    outcome = run()
    cpu1, machine1, t1 = tree_cpu(pid), machine_cpu(), time.monotonic()
    cores = os.cpu_count() or 1
    machine = cores * (machine1[0] - machine0[0]) / (machine1[1] - machine0[1] or float("nan"))
    return replace(
        outcome,
        mode=name,
        server_cpu_cores=(cpu1 - cpu0) / (t1 - t0),
        machine_cpu_cores=machine,
    )


def run_torchserve(mar: Path, args: argparse.Namespace, workdir: Path, calls: Calls) -> Outcome:
    run_dir = Path(tempfile.mkdtemp(prefix="ts-", dir=workdir))
    with TorchServe(
        mar,
        run_dir,
        batch_size=args.max_batch_size,
        max_batch_delay_ms=round(args.max_delay_ms),
        workers=1,
    ) as ts:
        if ts.proc is None:
            raise RuntimeError("TorchServe is not running")
        return measure(
            TORCHSERVE,
            ts.proc.pid,
            lambda: drive(ts.grpc_address, args.clients, args.warmup, args.duration, calls),
        )


def run_gradsentry(mar: Path, args: argparse.Namespace, workdir: Path) -> Outcome:
    settings = {
        "model_format": "mar",
        "model_path": str(mar),
        "max_batch_size": args.max_batch_size,
        "max_delay_ms": args.max_delay_ms,
        "max_workers": max(8, args.clients),
        "queue_size": max(256, 4 * args.clients),
    }
    server = Server(settings, workdir)
    try:
        before = server.batch_sizes()
        outcome = measure(
            GRADSENTRY,
            server.proc.pid,
            lambda: drive(server.address, args.clients, args.warmup, args.duration),
        )
        after = server.batch_sizes()
    finally:
        code = server.stop()
    if code != 0:
        print(f"warning: gradsentry exited with {code}", file=sys.stderr)
    batches = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
    return replace(outcome, mean_batch_size=mean_batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per server (20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first (2)")
    parser.add_argument("--rounds", type=int, default=1, help="alternations (1)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="both servers (32)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="both servers (5)")
    parser.add_argument("--target", type=float, default=1.0, help="--check ratio (1)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
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

    runs: dict[str, list[Outcome]] = {TORCHSERVE: [], GRADSENTRY: []}
    with tempfile.TemporaryDirectory(prefix="gradsentry-ts-bench-") as tmp:
        workdir = Path(tmp)
        mar = build_mar(workdir / "store")
        calls = predictions_calls(workdir)
        batching = f"batch {args.max_batch_size}, delay {args.max_delay_ms:g} ms"
        for i in range(args.rounds):
            head = f"[{i + 1}/{args.rounds}]"
            print(f"{head} torchserve ({batching}), {args.clients} clients", flush=True)
            runs[TORCHSERVE].append(run_torchserve(mar, args, workdir, calls))
            print(f"{head} gradsentry ({batching}), {args.clients} clients", flush=True)
            runs[GRADSENTRY].append(run_gradsentry(mar, args, workdir))

    print(
        f"\n{'server':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'batch':>7}"
        f"{'server CPU':>12}{'machine CPU':>13}"
    )
    for outcomes in runs.values():
        for r in outcomes:
            print(
                f"{r.mode:<12}{r.requests_per_second:>9.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                f"{r.errors:>8d}{r.mean_batch_size:>7.1f}{r.server_cpu_cores:>12.2f}"
                f"{r.machine_cpu_cores:>13.2f}"
            )
            if r.error_codes:
                print(f"{'':<12}errors by code: {r.error_codes}")
    ts, gs = median_of(runs[TORCHSERVE]), median_of(runs[GRADSENTRY])
    ratio = gs.requests_per_second / ts.requests_per_second if ts.requests_per_second else 0.0
    errors = sum(r.errors for outcomes in runs.values() for r in outcomes)
    which = "median " if args.rounds > 1 else ""
    print(
        f"ratio gradsentry / torchserve ({which}requests/s): {ratio:.2f}x; errors: {errors} "
        f"(target >= {args.target:g}x with 0 errors; CPU in cores of {os.cpu_count()})"
    )
    if args.json:
        payload = {
            "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
            "ratio": ratio,
            "errors": errors,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    met = ratio >= args.target and errors == 0
    return 0 if met or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
