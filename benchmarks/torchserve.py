"""TorchServe (forward only) vs gradsentry (forward + confounding backprop + H) on one .mar.

Both serve the demo model from the same TorchServe archive (``build_mar`` in
``benchmarks/torchserve_harness.py``), on this machine, one after the other (never at the
same time), each with one torch thread and its dynamic batching on:

- TorchServe 0.12: one Python worker, the model registered with ``batch_size`` /
  ``max_batch_delay``; clients call its gRPC ``Predictions`` (probabilities back).
- gradsentry: ``gradsentry serve`` with ``model_format: mar`` on the same file,
  ``max_batch_size`` / ``max_delay_ms``; clients call ``Reliability.Check`` (prediction,
  verdict, score back).

The client load is ``benchmarks/load.py``'s: ``--clients`` concurrent clients, each with
its own channel, sending the demo digits back to back for ``--duration`` seconds after a
warm-up; only calls inside the window count. Printed per server: requests/s, p50/p99 latency, errors
and the CPU the server's processes used (cores); then the ratio gradsentry / TorchServe in
requests/s. ``--check`` exits 1 unless the ratio reaches ``--target`` (1.0: gradsentry's
checked requests/s at least TorchServe's plain predictions/s) with zero errors.

    python benchmarks/torchserve.py [--clients 16] [--duration 20] [--rounds 1]
                                    [--max-batch-size 32] [--max-delay-ms 5] [--check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.load import (
    Calls,
    Outcome,
    add_load_arguments,
    check_load_arguments,
    drive,
    measure,
    report,
    run_mode,
)
from benchmarks.torchserve_harness import (
    TorchServe,
    build_mar,
    inference_protos,
    prediction_request,
)
from detectors.demo import ARTIFACTS

GRADSENTRY, TORCHSERVE = "gradsentry", "torchserve"


def predictions_calls(workdir: Path) -> Calls:
    """Clients calling TorchServe's gRPC Predictions on the demo digits in turn."""
    pb2, pb2_grpc = inference_protos(workdir / "ts-protos")
    images = np.load(ARTIFACTS / "samples.npz")["images"].astype(np.float32) / 255.0
    requests = [prediction_request(pb2, img[None]) for img in images]

    def bind(channel: grpc.aio.Channel) -> Callable[[int], Awaitable[object]]:
        predict = pb2_grpc.InferenceAPIsServiceStub(channel).Predictions
        return lambda i: predict(requests[i % len(requests)], timeout=30)

    return bind


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
        "max_workers": max(64, 4 * args.clients),
        "queue_size": max(256, 4 * args.clients),
    }
    return run_mode(GRADSENTRY, settings, args, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, "server", target=1.0)
    args = parser.parse_args(argv)
    check_load_arguments(parser, args)

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

    return report(runs, args, GRADSENTRY, TORCHSERVE, "gradsentry / torchserve")


if __name__ == "__main__":
    raise SystemExit(main())
