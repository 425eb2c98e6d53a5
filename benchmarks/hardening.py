"""Hardening bars of the sidecar, measured on a real ``gradsentry serve`` (the demo).

Per round, against one server process:

- ``batch``: one ``CheckBatch`` of 209,702 1x1 PNGs (15.3 MB): seconds until refused;
- ``chunks``: one ``Check`` of a 28x28 PNG with 1,390,000 empty ancillary chunks
  (16.7 MB): seconds until refused;
- while each is sent, another client checks health every 20 ms: its slowest answer; and
  the server's resident memory before and after (``process_resident_memory_bytes``);
- ``idle``: with 1,000 CheckStreams and 1,000 health Watch / reflection streams held open
  without a message, the slowest of 5 health Check, GetInfo and Check answers.

Bars (from the hardening issue): refused in <= 0.5 s, health <= 1 s, RSS growth <= 100 MB,
answers with idle streams <= 1 s. Prints each round and the median and spread over
``--rounds``; ``--check`` exits 1 when a median misses its bar.

    python benchmarks/hardening.py [--rounds 3] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from tests.servers import ServerProcess, serve_process, tensor_request
from tests.service.test_amplification import EMPTY_CHUNKS, TINY_PNGS, image_request, padded_png, png

BARS = {"refuse_s": 0.5, "health_s": 1.0, "rss_mb": 100.0, "idle_answer_s": 1.0}
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def while_probing(server: ServerProcess, call: Callable[[pb_grpc.ReliabilityStub], Any]):
    """(seconds ``call`` took, slowest health answer meanwhile, RSS growth in MB)."""
    rss = server.metric("process_resident_memory_bytes")
    slowest = [0.0]
    done = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(server.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while not done.is_set():
                t0 = time.perf_counter()
                health.Check(health_pb2.HealthCheckRequest(), timeout=30)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.1)
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(server.target, options=options) as ch:
        stub = pb_grpc.ReliabilityStub(ch)
        t0 = time.perf_counter()
        try:
            call(stub)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        took = time.perf_counter() - t0
    time.sleep(0.1)
    done.set()
    prober.join()
    grown = (server.metric("process_resident_memory_bytes") - rss) / 2**20
    return took, slowest[0], grown


async def idle_answers(server: ServerProcess, streams: int = 1000) -> float:
    """The slowest health / GetInfo / Check answer with ``streams`` idle streams of each
    kind open."""
    async with grpc.aio.insecure_channel(server.target) as ch:
        stub = pb_grpc.ReliabilityStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        held = [stub.CheckStream() for _ in range(streams)]
        held += [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(streams // 2)]
        held += [ch.stream_stream(REFLECTION)() for _ in range(streams // 2)]
        await asyncio.sleep(2.0)  # every stream reaches the server and is admitted or refused
        x = np.zeros((1, 28, 28), np.float32)
        slowest = 0.0
        for _ in range(5):
            for call in (
                lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=30),
                lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=30),
                lambda: stub.Check(tensor_request(x), timeout=30),
            ):
                t0 = time.perf_counter()
                await call()
                slowest = max(slowest, time.perf_counter() - t0)
        for call in held:
            call.cancel()
        return slowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="exit 1 when a median misses")
    args = parser.parse_args(argv)
    batch = pb.CheckBatchRequest(
        requests=[image_request(png(np.zeros((1, 1), np.uint8)))] * TINY_PNGS
    )
    bomb = image_request(padded_png(np.zeros((28, 28), np.uint8), EMPTY_CHUNKS))
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, serve_process(Path(tmp)) as server:
        for r in range(args.rounds):
            b = while_probing(server, lambda stub: stub.CheckBatch(batch, timeout=120))
            c = while_probing(server, lambda stub: stub.Check(bomb, timeout=120))
            idle = asyncio.run(idle_answers(server))
            row = {
                "batch_refuse_s": b[0],
                "chunks_refuse_s": c[0],
                "health_s": max(b[1], c[1]),
                "rss_mb": max(b[2], c[2]),
                "idle_answer_s": idle,
            }
            rows.append(row)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    failed = False
    for key in rows[0]:
        values = [row[key] for row in rows]
        bar = BARS["refuse_s" if key.endswith("refuse_s") else key]
        median = statistics.median(values)
        ok = median <= bar
        failed |= not ok
        print(
            f"{key:16s} median {median:8.3f}  min {min(values):8.3f}  max {max(values):8.3f}"
            f"  bar {bar:g}  {'ok' if ok else 'MISSED'}"
        )
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
