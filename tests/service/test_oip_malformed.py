"""Property: every malformed Open Inference Protocol request, over gRPC or REST, is refused
with INVALID_ARGUMENT / HTTP 400 and a message naming its problem, and the server shrugs
it off.

Hypothesis sends well over 2,000 malformed ModelInfer requests (well-formed protobuf, or an
HTTP body) to ONE real server: wrong datatypes, near-miss shapes, byte counts that do not
match the shape, value counts that do not, raw and typed contents mixed, typed contents in
another type's field, unknown input and output names, no input or two, huge declared shapes
with tiny data, NaN/Inf, values out of range, malformed ids, raw-content counts that do not
match the inputs; over REST also bodies that are not JSON, not an object, ragged or
non-numeric data and binary sizes that do not add up. Each case knows the words its answer
must contain. Afterwards the server is still SERVING and answers valid inputs unchanged.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service._proto.inference import grpc_predict_v2_pb2 as oip_pb
from service._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from service.server import SentryServer
from tests.servers import WAIT, demo_server

MODEL = "gradsentry"
SHAPE = [1, 1, 28, 28]
PIXELS = 784
EXAMPLES = 2100  # each example is one call
# Fixed: a failure in CI replays here (hypothesis prints this seed with a failing example).
SEED = 20261217
NEAR_MISS_SHAPES = [
    [1, 28, 28], [28, 28], [784], [1, 784], [1, 28, 28, 1], [1, 3, 28, 28], [1, 1, 28, 27],
    [1, 1, 1, 28, 28], [0, 1, 28, 28], [-1, 1, 28, 28], [1, 0, 28, 28], [1, -1, 28, 28], [],
]  # fmt: skip
HUGE_SHAPES = [
    [10**12, 1, 28, 28], [2**62, 1, 28, 28], [100_000, 1, 28, 28], [1, 10**9, 28, 28],
    [1, 1, 28 * 10**6, 28],
]  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    """One input: ``raw`` bytes and/or typed ``values`` (in ``field``, gRPC)."""

    name: str = "input"
    datatype: str = "FP32"
    shape: tuple[int, ...] = tuple(SHAPE)
    raw: bytes | None = None
    values: list | None = None
    field: str = "fp32_contents"


@dataclass(frozen=True)
class Case:
    """One malformed request; the answer must contain one of ``expect``. ``body`` (REST
    only) replaces the JSON body; ``grpc``/``rest`` say where the case applies."""

    what: str
    tensors: tuple[Tensor, ...]
    expect: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    rid: str = ""
    raw_extra: int = 0  # surplus raw_input_contents entries (gRPC)
    body: bytes | None = None
    grpc: bool = True
    rest: bool = True
    headers: dict[str, str] = field(default_factory=dict)


def _pixels(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(n * PIXELS).astype("<f4")


def _raw(seed: int, **kw) -> Tensor:
    return Tensor(raw=_pixels(seed).tobytes(), **kw)


SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def wrong_datatypes(draw: st.DrawFn) -> Case:
    datatype = draw(
        st.sampled_from(["FP64", "FP16", "UINT8", "INT32", "BYTES", "BOOL", "", "fp32"])
    )
    size = {"FP64": 8, "FP16": 2, "UINT8": 1, "INT32": 4, "BOOL": 1}.get(datatype, 4)
    data = np.random.default_rng(draw(SEEDS)).bytes(PIXELS * size)
    return Case("wrong datatype", (Tensor(datatype=datatype, raw=data),), ("datatype",))


@st.composite
def wrong_shapes(draw: st.DrawFn) -> Case:
    shape = draw(st.sampled_from(NEAR_MISS_SHAPES))
    return Case(
        "wrong shape", (_raw(draw(SEEDS), shape=tuple(shape)),), ("shape", "inputs in one call")
    )


@st.composite
def wrong_byte_counts(draw: st.DrawFn) -> Case:
    n = draw(st.integers(0, 4 * PIXELS * 2).filter(lambda k: k != 4 * PIXELS))
    data = np.random.default_rng(draw(SEEDS)).bytes(n)
    return Case("byte count", (Tensor(raw=data),), (f"{n} bytes, but shape",))


@st.composite
def wrong_value_counts(draw: st.DrawFn) -> Case:
    n = draw(st.integers(0, 2 * PIXELS).filter(lambda k: k != PIXELS))
    values = _pixels(draw(SEEDS), 2)[:n].tolist()
    return Case("value count", (Tensor(values=values),), (f"{n} values",))


@st.composite
def mixed_contents(draw: st.DrawFn) -> Case:
    x = _pixels(draw(SEEDS))
    return Case("mixed raw and typed", (Tensor(raw=x.tobytes(), values=x.tolist()),), ("both",))


@st.composite
def typed_in_other_fields(draw: st.DrawFn) -> Case:
    other = draw(
        st.sampled_from(["int_contents", "int64_contents", "fp64_contents", "bool_contents"])
    )
    values = [1] * PIXELS if other != "bool_contents" else [True] * PIXELS
    if other == "fp64_contents":
        values = _pixels(draw(SEEDS)).astype(float).tolist()
    return Case(
        "typed in another field", (Tensor(values=values, field=other),), (other,), rest=False
    )


@st.composite
def non_numeric_json(draw: st.DrawFn) -> Case:
    data = draw(
        st.sampled_from(
            [["a"] * PIXELS, [True] * PIXELS, [None] * PIXELS, [[0.5], [0.5, 0.5]], "0.5"]
        )
    )
    return Case("non-numeric data", (Tensor(values=data),), ("number", "list"), grpc=False)


@st.composite
def unknown_inputs(draw: st.DrawFn) -> Case:
    name = draw(st.sampled_from(["image", "INPUT", "input0", "", "x" * 300, "inputs"]))
    return Case("unknown input", (_raw(draw(SEEDS), name=name),), ("unknown input",))


@st.composite
def input_counts(draw: st.DrawFn) -> Case:
    seed_ = draw(SEEDS)
    tensors = draw(st.sampled_from([(), (_raw(seed_), _raw(seed_ + 1))]))
    return Case("input count", tensors, ("no input tensor", "2 tensors named"))


@st.composite
def unknown_outputs(draw: st.DrawFn) -> Case:
    outputs = draw(
        st.sampled_from([("boxes",), ("logits", "LOGITS"), ("",), ("score",), ("logits", "logits")])
    )
    return Case(
        "bad output", (_raw(draw(SEEDS)),), ("unknown output", "requested twice"), outputs=outputs
    )


@st.composite
def huge_shapes(draw: st.DrawFn) -> Case:
    shape = tuple(draw(st.sampled_from(HUGE_SHAPES)))
    tiny = draw(st.sampled_from([b"", _pixels(1)[:1].tobytes(), _pixels(2).tobytes()]))
    return Case(
        "huge shape, tiny data", (Tensor(shape=shape, raw=tiny),), ("split the call", "shape")
    )


@st.composite
def non_finite(draw: st.DrawFn) -> Case:
    x = _pixels(draw(SEEDS))
    x[draw(st.integers(0, PIXELS - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return Case("NaN/Inf", (Tensor(raw=x.tobytes()),), ("non-finite",))


@st.composite
def out_of_range(draw: st.DrawFn) -> Case:
    x = _pixels(draw(SEEDS))
    x[draw(st.integers(0, PIXELS - 1))] = draw(st.sampled_from([-1e-3, 1.001, 255.0, -7.0]))
    typed = draw(st.booleans())
    tensor = Tensor(values=x.tolist()) if typed else Tensor(raw=x.tobytes())
    return Case("out of range", (tensor,), ("out of range",))


@st.composite
def bad_ids(draw: st.DrawFn) -> Case:
    rid = draw(st.sampled_from(["two words", "x" * 129, "caf\u00e9", "tab\there", "\n"]))
    return Case("bad id", (_raw(draw(SEEDS)),), ("id must be",), rid=rid)


@st.composite
def raw_counts(draw: st.DrawFn) -> Case:
    extra = draw(st.integers(1, 3))
    return Case(
        "raw count",
        (_raw(draw(SEEDS)),),
        ("raw_input_contents holds",),
        raw_extra=extra,
        rest=False,
    )


@st.composite
def bad_bodies(draw: st.DrawFn) -> Case:
    body, words = draw(
        st.sampled_from(
            [
                (b"{", "not valid JSON"),
                (b"\xff\xfe", "not valid JSON"),
                (b"[1, 2]", "JSON object"),
                (b'{"inputs": {}}', "inputs must be a list"),
                (b'{"inputs": [7]}', "must be an object"),
                (b'{"inputs": [{"name": "input"}]}', "datatype must be"),
                (b"[" * 100_000, "not valid JSON"),
                (b'{"inputs": [], "outputs": "logits"}', "outputs must be"),
            ]
        )
    )
    return Case("bad body", (), (words,), body=body, grpc=False)


@st.composite
def binary_sizes(draw: st.DrawFn) -> Case:
    x = _pixels(draw(SEEDS)).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": SHAPE,
                    "datatype": "FP32",
                    "parameters": {
                        "binary_data_size": len(x) + draw(st.sampled_from([-4, 4, 10**9]))
                    },
                }
            ]
        }
    ).encode()
    return Case(
        "binary size", (), ("binary",), body=header + x, grpc=False,
        headers={"inference-header-content-length": str(len(header))},
    )  # fmt: skip


MALFORMED = st.one_of(
    wrong_datatypes(), wrong_shapes(), wrong_byte_counts(), wrong_value_counts(),
    mixed_contents(), typed_in_other_fields(), non_numeric_json(), unknown_inputs(),
    input_counts(), unknown_outputs(), huge_shapes(), non_finite(), out_of_range(),
    bad_ids(), raw_counts(), bad_bodies(), binary_sizes(),
)  # fmt: skip


def grpc_request(case: Case) -> oip_pb.ModelInferRequest:
    request = oip_pb.ModelInferRequest(model_name=MODEL, id=case.rid)
    for t in case.tensors:
        tensor = request.inputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        if t.values is not None:
            getattr(tensor.contents, t.field).extend(t.values)
        if t.raw is not None:
            request.raw_input_contents.append(t.raw)
    request.raw_input_contents.extend([b"\0" * 4] * case.raw_extra)
    for name in case.outputs:
        request.outputs.add(name=name)
    return request


def rest_body(case: Case) -> tuple[bytes, dict[str, str]]:
    if case.body is not None:
        return case.body, case.headers
    inputs, blobs = [], []
    for t in case.tensors:
        item: dict = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if t.values is not None:
            item["data"] = t.values
        if t.raw is not None:
            item["parameters"] = {"binary_data_size": len(t.raw)}
            blobs.append(t.raw)
        inputs.append(item)
    body: dict = {"inputs": inputs, "outputs": [{"name": n} for n in case.outputs]}
    if case.rid:
        body["id"] = case.rid
    head = json.dumps(body).encode()
    if not blobs:
        return head, {}
    return head + b"".join(blobs), {"inference-header-content-length": str(len(head))}


class Rest:
    """One keep-alive HTTP connection to the REST port (reopened if the server closes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                reply = self.conn.getresponse()
                return reply.status, reply.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def oip_server() -> Iterator[tuple[SentryServer, int]]:
    with demo_server(GRADSENTRY_REST_ENABLED="true", GRADSENTRY_REST_PORT="0") as started:
        yield started


def valid_answers(stub: oip_grpc.GRPCInferenceServiceStub, rest: Rest, x: np.ndarray) -> list:
    """Every output of ``x``'s inputs, each alone, over gRPC and REST (raw bytes / JSON)."""
    out = []
    for i in range(len(x)):
        request = oip_pb.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=SHAPE)
        request.raw_input_contents.append(x[i].tobytes())
        out.append(list(stub.ModelInfer(request, timeout=WAIT).raw_output_contents))
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": SHAPE,
                    "datatype": "FP32",
                    "data": x[i].reshape(-1).tolist(),
                }
            ]
        }
        status, reply = rest.post(f"/v2/models/{MODEL}/infer", json.dumps(body).encode(), {})
        assert status == 200, reply
        out.append(json.loads(reply)["outputs"])
    return out


def test_malformed_oip_requests_are_invalid_argument_and_harmless(
    oip_server: tuple[SentryServer, int], samples
) -> None:
    running, port = oip_server
    assert running.rest_port is not None
    rest = Rest(running.rest_port)
    x = (samples[0][:4].astype(np.float32) / 255.0).reshape(4, 1, 1, 28, 28)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        before = valid_answers(stub, rest, x)
        sent: Counter[str] = Counter()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @seed(SEED)
        @given(case=MALFORMED, over_rest=st.booleans())
        def each_is_refused(case: Case, over_rest: bool) -> None:
            over_rest = (over_rest and case.rest) or not case.grpc
            if over_rest:
                body, headers = rest_body(case)
                status, reply = rest.post(f"/v2/models/{MODEL}/infer", body, headers)
                details = json.loads(reply)["error"]
                assert status == 400, (case.what, status, details)
                sent[f"REST {case.what}"] += 1
            else:
                try:
                    stub.ModelInfer(grpc_request(case), timeout=WAIT)
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                else:
                    code, details = grpc.StatusCode.OK, "answered as if valid"
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (case.what, code, details)
                sent[f"gRPC {case.what}"] += 1
            assert any(e in details for e in case.expect), (case.what, case.expect, details)

        each_is_refused()
        assert sum(sent.values()) >= 2000, sent
        for transport in ("gRPC", "REST"):
            assert sum(n for k, n in sent.items() if k.startswith(transport)) >= 500, sent
        # The mistakes the issue names were each made many times, over both transports.
        for what in (
            "mixed raw and typed",
            "byte count",
            "unknown input",
            "bad output",
            "huge shape, tiny data",
        ):
            assert sent[f"gRPC {what}"] >= 10 and sent[f"REST {what}"] >= 10, sent

        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.ServerReady(oip_pb.ServerReadyRequest(), timeout=10).ready
        assert valid_answers(stub, rest, x) == before
