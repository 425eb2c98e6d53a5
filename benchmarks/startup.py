"""Start-up cost of the ``gradsentry`` command line, each beside ``import torch``.

Every figure is the median of ``--runs`` fresh processes (wall clock, this machine):

- ``gradsentry --help``;
- ``gradsentry health`` against a live sidecar (exit 0);
- ``gradsentry serve`` on the bundled demo, from process start until the standard gRPC
  health service answers SERVING (polled every 10 ms from this process);
- ``python -c "import torch"``, the reference: the floor of anything that runs a model.

    python benchmarks/startup.py [--runs 5] [--json FILE] [--check]

``--check`` exits 1 unless the medians meet the targets: ``--help`` ≤ 0.5 s, ``health``
≤ 0.5 s, ``serve`` to SERVING ≤ 3 s. Run it from a checkout with ``.venv`` (``make
install``); the console script used is the one beside this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GRADSENTRY = str(BIN / "gradsentry")
TARGETS = {"help": 0.5, "health": 0.5, "serve": 3.0}
START_TIMEOUT = 120.0


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall seconds of one process run to completion (must exit 0)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


def server_env() -> dict[str, str]:
    """The demo on ports the kernel picks (0); the log names the gRPC one."""
    return {
        **os.environ,
        "GRADSENTRY_PORT": "0",
        "GRADSENTRY_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }


def start_serve(log: Path) -> tuple[subprocess.Popen[bytes], float, int]:
    """Start ``gradsentry serve``; returns (process, seconds to SERVING, port)."""
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [GRADSENTRY, "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(),
            cwd=ROOT,
        )
    port = 0
    deadline = t0 + START_TIMEOUT
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        if not port:
            port = listening_port(log.read_text())
        if port and serving(port):
            return proc, time.perf_counter() - t0, port
        time.sleep(0.01)
    proc.kill()
    raise SystemExit(f"serve not SERVING after {START_TIMEOUT:.0f} s")


def listening_port(text: str) -> int:
    """The gRPC port from the server's 'listening' log line (0 until it is there)."""
    found = re.search(r"listening on [^\s:]+:(\d+)", text)
    return int(found[1]) if found else 0


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--check", action="store_true", help="exit 1 unless every target is met")
    args = p.parse_args(argv)
    torch_import = [sys.executable, "-c", "import torch"]
    samples: dict[str, list[float]] = {k: [] for k in ("help", "health", "serve", "torch")}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        for _ in range(args.runs):  # interleaved, so drift hits every figure alike
            samples["torch"].append(timed(torch_import))
            samples["help"].append(timed([GRADSENTRY, "--help"]))
            proc, seconds, port = start_serve(log)
            samples["serve"].append(seconds)
            try:
                samples["health"].append(
                    timed([GRADSENTRY, "health", "--target", f"127.0.0.1:{port}"])
                )
            finally:
                stop(proc)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    torch_s = medians["torch"]
    print(f"{'command':<34} {'median':>8} {'min':>7} {'max':>7} {'target':>7} {'/torch':>7}")
    names = {
        "help": "gradsentry --help",
        "health": "gradsentry health (live server)",
        "serve": "gradsentry serve -> SERVING",
        "torch": 'python -c "import torch"',
    }
    ok = True
    for key, label in names.items():
        v = samples[key]
        target = TARGETS.get(key)
        met = target is None or medians[key] <= target
        ok &= met
        shown = f"{target:.1f} s" if target else "-"
        print(
            f"{label:<34} {medians[key]:>7.2f}s {min(v):>6.2f}s {max(v):>6.2f}s {shown:>7} "
            f"{medians[key] / torch_s:>6.2f}x{'' if met else '  MISSED'}"
        )
    if args.json:
        args.json.write_text(json.dumps({"samples": samples, "medians": medians}, indent=2))
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
