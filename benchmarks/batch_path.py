"""The path of a batch from the request's bytes to the model's input tensor, before and now.

Three paths, each timed per batch with a real worker process at the other end of a socket
pair (a child of this script that does what ``service.engine.worker`` does with a batch,
without the model):

  before   the path as it was: each input decoded to float (uint8 through a float
           lookup table), checked with an ``isfinite`` mask and normalised in three passes;
           the batch concatenated, packed into a message (``tobytes`` + ``join``), sent
           through the socket and copied out of the message in the worker
  socket   today's decoding (no copy for a float32 tensor without normalisation, one pass
           for the normalisation, pixels kept uint8), the batch packed and sent as before:
           the fallback when no shared buffer can be made
  shared   today's decoding, the batch written once into a slot of the buffer shared with
           the worker (``service.engine.shared_batch``), a header on the socket; the worker
           reads the slot in place and maps pixels there (``DevicePixels``)

Columns: ``server ms``, the gRPC process's time per batch (decoding every input, building
and sending the batch: on the process that runs at lower priority), ``decode ms`` the
decoding part of it; ``to tensor ms``, from
the start of the batch's sending to the model's input tensor ready in the worker;
``worker ms``, the worker's own part of that; ``server MB`` and ``worker MB``, the most
memory each side allocated at once above its baseline during one batch (``tracemalloc``,
NumPy's and Python's allocations; one message or one copy of the batch is its size); and
``bytes on the socket``. Ratios are of ``before`` over the row's path. Inputs: float32
tensors or uint8 tensors (the bytes of a decoded image) at 64x3x224x224 with ImageNet
normalisation, and the demo's 1x28x28 (range [0, 1], no normalisation) at batch 1 and 64.
Medians of ``--repeats`` batches, the paths interleaved.

    python benchmarks/batch_path.py [--repeats 15] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service.dataplane.codec import _uint8_table
from service.engine.pipeline import padding
from service.engine.shared_batch import AttachedBatches, SharedBatches, slot_size
from service.engine.wire import pack, unpack
from service.spec import InputSpec
from service.transport.grpc_v1.codec import decode

IMAGENET = InputSpec(shape=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
DEMO = InputSpec(shape=(1, 28, 28))
CASES: tuple[tuple[str, InputSpec, int], ...] = (
    ("64x3x224x224", IMAGENET, 64),
    ("1x1x28x28", DEMO, 1),
    ("64x1x28x28", DEMO, 64),
)
PATHS = ("before", "socket", "shared")
WIRE = {"float32": pb.FLOAT32, "uint8": pb.UINT8}


# -- the path as it was (kept here as the reference) ---------------------------------------


def decode_before(request: pb.CheckRequest, spec: InputSpec) -> np.ndarray:
    """The gRPC codec's tensor decoding before: float copy, isfinite mask, three passes."""
    t = request.tensor
    raw = np.frombuffer(t.data, dtype="u1" if t.dtype == pb.UINT8 else "<f4")
    raw = raw.reshape(1, *spec.shape)
    x = _uint8_table(spec.value_range, spec.dtype)[raw] if raw.dtype == np.uint8 else None
    if x is None:
        x = raw.astype(spec.dtype)
    finite = np.isfinite(x)
    if not finite.all():
        raise ValueError("non-finite")
    lo, hi = spec.value_range
    if float(x.min()) < lo or float(x.max()) > hi:
        raise ValueError("out of range")
    if not spec.mean:
        return x
    mean = np.asarray(spec.mean, dtype=spec.dtype).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=spec.dtype).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(spec.dtype)


# -- the gRPC process's side -------------------------------------------------------------


def requests_for(spec: InputSpec, rows: int, kind: str, seed: int = 0) -> list[pb.CheckRequest]:
    """``rows`` CheckRequests holding random tensors of ``kind`` (float32 or uint8)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        if kind == "uint8":
            data = rng.integers(0, 256, spec.shape, dtype=np.uint8).tobytes()
        else:
            data = rng.random(spec.shape, dtype=np.float32).tobytes()
        tensor = pb.Tensor(dtype=WIRE[kind], shape=list(spec.shape), data=data)
        out.append(pb.CheckRequest(tensor=tensor))
    return out


class Server:
    """This process's end: sends batches to the child along one of the paths."""

    def __init__(self, spec: InputSpec, rows: int) -> None:
        self.spec = spec
        ours, theirs = socket.socketpair()
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.batches = SharedBatches(1, slot_size(rows, spec.shape, spec.dtype))
        self.conn.send_bytes(pack({"op": "batches", "spec": _spec(spec), **self.batches.layout}))
        self.batches.send_to(self.conn)
        unpack(self.conn.recv_bytes())

    def batch(self, path: str, requests: Sequence[pb.CheckRequest]) -> dict[str, float]:
        """One batch along ``path``; its timings and socket bytes."""
        t0 = time.perf_counter()
        if path == "before":
            inputs = [decode_before(r, self.spec) for r in requests]
        else:
            inputs = [decode(r, self.spec) for r in requests]
        t_send = time.perf_counter()
        parts = padding(inputs, 1)
        if path == "shared":
            slot = self.batches.take(sum(p.nbytes for p in parts))
            assert slot is not None
            message = pack({"op": "check", **self.batches.write(slot, parts)})
        else:
            message = pack({"op": "check"}, {"x": np.concatenate(parts, axis=0)})
        self.conn.send_bytes(message)
        t_sent = time.perf_counter()
        del message, parts, inputs
        reply, _ = unpack(self.conn.recv_bytes())
        if path == "shared":
            self.batches.give_back(slot)
        return {
            "server_s": t_sent - t0,
            "decode_s": t_send - t0,
            "to_tensor_s": reply["ready"] - t_send,
            "worker_s": reply["worker_s"],
            "socket_bytes": float(reply["bytes"]),
            "worker_peak": float(reply["peak"]),
        }

    def peaks(self, path: str, requests: Sequence[pb.CheckRequest]) -> tuple[float, float]:
        """Most bytes this process and the child allocated at once above their baselines
        in one batch."""
        self.conn.send_bytes(pack({"op": "trace"}))
        unpack(self.conn.recv_bytes())
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        worker = self.batch(path, requests)["worker_peak"]
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return float(peak), worker

    def close(self) -> None:
        self.conn.send_bytes(pack({"op": "stop"}))
        self.child.wait(30)
        self.conn.close()
        self.batches.close()


def _spec(spec: InputSpec) -> dict[str, Any]:
    return {
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "value_range": list(spec.value_range),
        "mean": list(spec.mean),
        "std": list(spec.std),
    }


# -- the worker's side -------------------------------------------------------------------


def child(fd: int) -> None:
    """What the model worker does with a batch, up to the model's input tensor."""
    import torch

    from service.engine.pipeline import DevicePixels

    torch.set_num_threads(1)
    conn = Connection(fd)
    meta, _ = unpack(conn.recv_bytes())
    fields = meta["spec"]
    spec = InputSpec(
        shape=tuple(fields["shape"]),
        dtype=fields["dtype"],
        value_range=tuple(fields["value_range"]),
        mean=tuple(fields["mean"]),
        std=tuple(fields["std"]),
    )
    attached = AttachedBatches.receive(conn, meta)
    pixels = DevicePixels(spec)
    conn.send_bytes(pack({"op": "batches"}))
    tracing = False
    while True:
        if not conn.poll(None):
            return
        t0 = time.perf_counter()
        if tracing:
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
        message = conn.recv_bytes()
        meta, arrays = unpack(message)
        if meta["op"] == "stop":
            return
        if meta["op"] == "trace":
            tracing = True
            conn.send_bytes(pack({}))
            continue
        if "slot" in meta:
            x = torch.from_numpy(attached.batch(meta))
        else:
            x = torch.from_numpy(np.array(arrays["x"]))
        x = pixels(x)  # the model's input, of spec.dtype
        ready = time.perf_counter()
        peak = 0
        if tracing:
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            tracing = False
        nbytes = len(message)
        del x, arrays, message
        conn.send_bytes(
            pack({"ready": ready, "worker_s": ready - t0, "bytes": nbytes, "peak": peak})
        )


# -- the report ----------------------------------------------------------------------------


def measure(repeats: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, spec, rows in CASES:
        server = Server(spec, rows)
        try:
            for kind in ("float32", "uint8"):
                requests = requests_for(spec, rows, kind)
                runs: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
                for _ in range(2):  # warm-up
                    for path in PATHS:
                        server.batch(path, requests)
                for _ in range(repeats):
                    for path in PATHS:
                        runs[path].append(server.batch(path, requests))
                case: dict[str, Any] = {}
                for path in PATHS:
                    row = {k: statistics.median(r[k] for r in runs[path]) for k in runs[path][0]}
                    row["server_peak"], row["worker_peak"] = server.peaks(path, requests)
                    case[path] = row
                report[f"{name} {kind}"] = case
        finally:
            server.close()
    return report


def print_report(report: dict[str, Any]) -> None:
    head = (
        f"{'case':<22} {'path':<7} {'server ms':>10} {'decode ms':>10} {'to tensor ms':>13} "
        f"{'worker ms':>10} "
        f"{'server MB':>10} {'worker MB':>10} {'socket bytes':>13} {'server x':>9} "
        f"{'to tensor x':>12}"
    )
    print(head)
    print("-" * len(head))
    for case, paths in report.items():
        before = paths["before"]
        for path, r in paths.items():
            print(
                f"{case:<22} {path:<7} {r['server_s'] * 1e3:>10.3f} {r['decode_s'] * 1e3:>10.3f} "
                f"{r['to_tensor_s'] * 1e3:>13.3f} {r['worker_s'] * 1e3:>10.3f} "
                f"{r['server_peak'] / 1e6:>10.2f} {r['worker_peak'] / 1e6:>10.2f} "
                f"{int(r['socket_bytes']):>13d} "
                f"{before['server_s'] / r['server_s']:>8.2f}x "
                f"{before['to_tensor_s'] / r['to_tensor_s']:>11.2f}x"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child)
        return
    report = measure(args.repeats)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
