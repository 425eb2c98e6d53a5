"""The committed stubs in service/_proto are exactly what `make protos` generates now."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = "protos/gradsentry/v1/reliability.proto"
GENERATED = Path("service/_proto/gradsentry/v1")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path, monkeypatch) -> None:
    # The same invocation as the Makefile's `protos` target, into a temporary root.
    monkeypatch.chdir(ROOT)
    args = [
        "grpc_tools.protoc",
        "-Iservice/_proto=protos",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        PROTO,
    ]
    assert protoc.main(args) == 0
    fresh = {p.name: p.read_bytes() for p in (tmp_path / GENERATED).iterdir()}
    committed = {
        p.name: p.read_bytes() for p in (ROOT / GENERATED).iterdir() if p.name.endswith(SUFFIXES)
    }
    assert sorted(fresh) == sorted(committed), "generated file set differs: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}: run `make protos`"


def test_stubs_import_as_a_package_and_name_the_service() -> None:
    from service._proto.gradsentry.v1 import reliability_pb2, reliability_pb2_grpc

    service = reliability_pb2.DESCRIPTOR.services_by_name["Reliability"]
    assert service.full_name == "gradsentry.v1.Reliability"
    assert {m.name for m in service.methods} == {"Check", "CheckBatch", "CheckStream", "GetInfo"}
    assert hasattr(reliability_pb2_grpc, "ReliabilityStub")
