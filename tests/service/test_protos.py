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


def test_committed_oip_stubs_match_a_fresh_generation(tmp_path: Path, monkeypatch) -> None:
    """The Open Inference Protocol stubs: protoc's output moved into a pool of their own
    (protos/oip_stubs.py), so that they load beside tritonclient's and kserve's."""
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "protos"))
    import oip_stubs

    fresh = {p.name: p.read_bytes() for p in oip_stubs.generate(tmp_path)}
    committed = {name: (ROOT / oip_stubs.GENERATED / name).read_bytes() for name in fresh}
    assert sorted(fresh) == sorted(stub_names("grpc_predict_v2")), sorted(fresh)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale OIP stubs {stale}: run `python protos/oip_stubs.py`"


def stub_names(stem: str) -> list[str]:
    return [stem + suffix for suffix in SUFFIXES]


def test_oip_stubs_name_the_wire_contract_and_load_beside_tritonclient() -> None:
    """Field names and numbers as the Open Inference Protocol's proto gives them (a client
    sends numbers, so one renumbered field would silently garble every request)."""
    import tritonclient.grpc.service_pb2 as triton

    from service._proto.inference import grpc_predict_v2_pb2 as ours

    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    for name in ("ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse"):
        mine, theirs = ours.DESCRIPTOR.message_types_by_name[name], getattr(triton, name).DESCRIPTOR
        for field in mine.fields:
            assert theirs.fields_by_name[field.name].number == field.number, (name, field.name)
