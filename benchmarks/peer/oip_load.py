"""An Open Inference Protocol load generator over gRPC, with ``tritonclient``.

    python oip_load.py --target HOST:PORT --model NAME --samples FILE.npz
                       [--clients 16] [--warmup 2] [--duration 20]

Runs in an environment that has ``tritonclient[grpc]`` (the peer virtual environment of
``benchmarks/peer_mlserver.py``); knows nothing of the server behind the target. It reads the
model's metadata (ModelMetadata) for its first input's name, datatype and shape (a -1 batch
dimension becomes 1), then lets ``--clients`` concurrent clients — each its own
``InferenceServerClient`` and channel, all on one event loop — send the images of
``--samples`` (``images`` uint8 [N, H, W], scaled to [0, 1]) as raw tensors (what tritonclient
always sends) one ModelInfer at a time for ``--duration`` seconds after ``--warmup``; only
calls that start after the warm-up and end within the window count. Prints one JSON object:
requests, errors by status, requests/s, p50/p99 latency in ms, calls made (warm-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

READY_TIMEOUT = 120.0  # a server's start-up on a loaded machine


async def input_spec(target: str, model: str) -> tuple[str, str, list[int]]:
    """(name, datatype, shape with batch 1) of the model's first input."""
    client = grpcclient.InferenceServerClient(target)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if await client.is_model_ready(model):
                    break
                last = "not ready"
            except InferenceServerException as exc:  # not listening yet, or no such service
                last = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"model {model} at {target}: {last}")
            await asyncio.sleep(0.2)
        meta = await client.get_model_metadata(model, as_json=True)
    finally:
        await client.close()
    first = meta["inputs"][0]
    shape = [1 if int(d) < 0 else int(d) for d in first["shape"]]
    return first["name"], first["datatype"], shape


def make_inputs(samples: np.ndarray, name: str, datatype: str, shape: list[int]) -> list[Any]:
    """One InferInput per sample image, in the model's datatype and shape."""
    inputs = []
    for image in samples:
        x = (image.astype(np.float32) / 255.0).astype(triton_to_np_dtype(datatype)).reshape(shape)
        request_input = grpcclient.InferInput(name, shape, datatype)
        request_input.set_data_from_numpy(x)
        inputs.append(request_input)
    return inputs


async def client_loop(
    target: str,
    model: str,
    k: int,
    clients: int,
    inputs: list[Any],
    start: float,
    end: float,
    tally: dict[str, Any],
) -> None:
    client = grpcclient.InferenceServerClient(target)
    i = k
    try:
        while (t0 := time.monotonic()) < end:
            code = "OK"
            try:
                await client.infer(model, [inputs[i % len(inputs)]], client_timeout=30)
            except InferenceServerException as exc:
                code = str(exc.status())
            t1 = time.monotonic()
            i += clients
            tally["made"] += 1
            if t0 >= start and t1 <= end:
                if code == "OK":
                    tally["latencies"].append(t1 - t0)
                else:
                    tally["codes"][code] = tally["codes"].get(code, 0) + 1
    finally:
        await client.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name, datatype, shape = await input_spec(args.target, args.model)
    samples = np.load(args.samples)["images"]
    inputs = make_inputs(samples, name, datatype, shape)
    tally: dict[str, Any] = {"latencies": [], "codes": {}, "made": 0}
    start = time.monotonic() + args.warmup
    end = start + args.duration
    await asyncio.gather(
        *(
            client_loop(args.target, args.model, k, args.clients, inputs, start, end, tally)
            for k in range(args.clients)
        )
    )
    lat = np.asarray(tally["latencies"]) * 1e3
    errors = sum(tally["codes"].values())
    return {
        "input": {"name": name, "datatype": datatype, "shape": shape},
        "requests": len(lat) + errors,
        "errors": errors,
        "error_codes": tally["codes"],
        "requests_per_second": len(lat) / args.duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "calls_made": tally["made"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--samples", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()
    try:  # as benchmarks/load.py's clients: uvloop when installed (less client CPU)
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
