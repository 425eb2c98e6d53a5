"""Generate the Open Inference Protocol stubs into ``service/_proto/inference/``.

``python protos/oip_stubs.py [OUT_ROOT]`` (default: the repository root) runs protoc as the
Makefile's ``protos`` target does, then moves the generated descriptors into a descriptor
pool of their own. Clients of the same protocol (``tritonclient.grpc``, the ``kserve``
SDK) register the very same ``inference.*`` names in protobuf's default pool; with ours
there too, whichever was imported second would fail to import in a process that holds
both (an embedded server and its tests, a client beside a server). Message names never
travel on the wire, so a private pool changes nothing a client sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "protos/inference/grpc_predict_v2.proto"
GENERATED = Path("service/_proto/inference")
_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = (
    "# Our own pool, not the default one: see protos/oip_stubs.py.\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)


def generate(out_root: Path) -> list[Path]:
    """protoc into ``out_root`` (relative imports read ``service._proto.inference``), then
    the private pool; returns the generated files."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        "-Iservice/_proto=protos",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        PROTO,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    pb2 = out_root / GENERATED / "grpc_predict_v2_pb2.py"
    text = pb2.read_text()
    if text.count(_DEFAULT_POOL) != 1:
        raise RuntimeError(f"{pb2}: protoc's output changed; update protos/oip_stubs.py")
    pb2.write_text(text.replace(_DEFAULT_POOL, _OWN_POOL))
    return sorted((out_root / GENERATED).glob("grpc_predict_v2_pb2*"))


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    for path in generate(out):
        print(path)
