"""A Python client for the gradsentry sidecar.

::

    with ReliabilityClient("127.0.0.1:50051") as client:
        result = client.check("digit.png")
        if result.flagged:
            ...

Inputs (``check``, ``check_batch``, ``check_stream``) may be numpy arrays — float32/float64/
float16 with values in the model's range, or uint8 (0..255 mapped onto that range) — shaped
[C, H, W], [H, W] (one channel) or [1, C, H, W]; encoded PNG/JPEG bytes; or a path to a
.png, .jpg, .jpeg or .npy file. Results are plain dataclasses. A failed call raises
``RequestError`` carrying the gRPC status code and the server's message; an input that
cannot even be sent raises ``InputError``. The client imports neither torch nor the
detectors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service._proto.gradsentry.v1 import reliability_pb2 as pb
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc

#: An input ``check`` accepts: an array, encoded image bytes, or a file path.
Input = np.ndarray | bytes | bytearray | memoryview | str | os.PathLike[str]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# numpy dtype -> wire DType; other dtypes are refused on the client (clearer than a
# server-side byte-count error).
_WIRE: dict[np.dtype, int] = {
    np.dtype("float32"): pb.FLOAT32,
    np.dtype("float64"): pb.FLOAT64,
    np.dtype("float16"): pb.FLOAT16,
    np.dtype("uint8"): pb.UINT8,
}
_LITTLE = {pb.FLOAT32: "<f4", pb.FLOAT64: "<f8", pb.FLOAT16: "<f2", pb.UINT8: "u1"}


class InputError(ValueError):
    """An input cannot be turned into a request (unknown file type, dtype, rank...)."""


class RequestError(RuntimeError):
    """A call failed: ``code`` is the gRPC status, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str) -> None:
        self.code = code
        self.details = details
        self.target = target
        super().__init__(f"{code.name}: {details}")

    @property
    def unreachable(self) -> bool:
        """True when the server could not be reached (or did not answer in time)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage (forward/backward/statistics/detector: the whole batch)."""

    decode: float
    queue: float
    forward: float
    backward: float
    statistics: float
    detector: float


@dataclass(frozen=True)
class CheckResult:
    """The sidecar's answer for one input.

    ``verdict`` is "RELIABLE" or "FLAGGED"; ``kind`` is the most likely challenge kind
    ("adversarial", "ood", "corrupted"; None when the detector has none), meaningful when
    flagged; ``kind_scores`` maps kind names to scores in [0, 1]. ``probabilities``
    (float32 [num_classes]) and ``features`` (float64 [num_features]) are empty unless
    requested.
    """

    request_id: str
    predicted_class: int
    label: str
    verdict: str
    score: float
    threshold: float
    kind: str | None
    kind_scores: dict[str, float]
    timings: Timings
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    @property
    def flagged(self) -> bool:
        """True when the prediction should not be trusted (score >= threshold)."""
        return self.verdict == "FLAGGED"


@dataclass(frozen=True)
class ServerInfo:
    """What the server's model expects and how its detector was fitted.

    ``input_shape`` is one input's [C, H, W]; ``value_range`` the inclusive (min, max) of
    valid values; ``mean`` / ``std`` the normalisation the server applies (empty: none).
    """

    input_shape: tuple[int, ...]
    input_dtype: str
    value_range: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    feature_names: tuple[str, ...]
    threshold: float
    target_fpr: float
    kinds: tuple[str, ...]
    model_fingerprint: str
    versions: dict[str, str]
    max_batch_size: int


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def array_request(array: np.ndarray) -> pb.CheckRequest:
    """A tensor request from an array [C, H, W], [H, W] or [1, C, H, W] (dtype: float32,
    float64, float16 or uint8)."""
    wire = _WIRE.get(array.dtype.newbyteorder("="))  # big-endian arrays are fine too
    if wire is None:
        raise InputError(
            f"arrays of dtype {array.dtype} cannot be sent; use float32 (values in the "
            "model's range) or uint8 (0..255)"
        )
    if array.ndim == 2:
        array = array[None]
    if array.ndim not in (3, 4):
        raise InputError(
            f"an array input must be [H, W], [C, H, W] or [1, C, H, W], got shape "
            f"{list(array.shape)}"
        )
    data = np.ascontiguousarray(array, dtype=_LITTLE[wire]).tobytes()
    return pb.CheckRequest(tensor=pb.Tensor(dtype=wire, shape=list(array.shape), data=data))


def image_request(data: bytes) -> pb.CheckRequest:
    """An encoded-image request from the bytes of a PNG or JPEG file."""
    if not (data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC)):
        raise InputError("image bytes are neither PNG nor JPEG (checked by their signature)")
    return pb.CheckRequest(image=pb.EncodedImage(data=data))


def to_request(item: Any) -> pb.CheckRequest:
    """Any accepted input (see the module docstring) -> CheckRequest."""
    if isinstance(item, bytes | bytearray | memoryview):
        return image_request(bytes(item))
    if isinstance(item, str | os.PathLike):
        path = Path(item)
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            data = _read_file(path, "image")
            try:
                return image_request(data)
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
        if suffix in ARRAY_SUFFIXES:
            try:
                array = np.load(path, allow_pickle=False)
            except OSError as exc:
                raise InputError(f"cannot read array {path}: {exc.strerror or exc}") from None
            except ValueError as exc:  # not an .npy file, or an object (pickled) array
                raise InputError(f"{path} is not a plain numeric .npy array: {exc}") from None
            try:
                return array_request(array)
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
        raise InputError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; use one of "
            + ", ".join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)
        )
    if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
        return array_request(np.asarray(item))
    raise InputError(
        f"cannot send a {type(item).__name__}; give a numpy array, PNG/JPEG bytes or a path"
    )


def result_from(response: pb.CheckResponse) -> CheckResult:
    """CheckResponse -> CheckResult."""
    t = response.timings
    kind = None if response.kind == pb.KIND_UNSPECIFIED else pb.Kind.Name(response.kind).lower()
    return CheckResult(
        request_id=response.request_id,
        predicted_class=response.predicted_class,
        label=response.label,
        verdict=pb.Verdict.Name(response.verdict),
        score=response.score,
        threshold=response.threshold,
        kind=kind,
        kind_scores=dict(response.kind_scores),
        timings=Timings(
            decode=t.decode_seconds,
            queue=t.queue_seconds,
            forward=t.forward_seconds,
            backward=t.backward_seconds,
            statistics=t.statistics_seconds,
            detector=t.detector_seconds,
        ),
        probabilities=np.asarray(response.probabilities, dtype=np.float32),
        features=np.asarray(response.features, dtype=np.float64),
    )


def info_from(response: pb.InfoResponse) -> ServerInfo:
    """InfoResponse -> ServerInfo."""
    spec = response.input
    return ServerInfo(
        input_shape=tuple(spec.shape),
        input_dtype=pb.DType.Name(spec.dtype).lower(),
        value_range=(spec.min_value, spec.max_value),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        labels=tuple(response.labels),
        feature_names=tuple(response.feature_names),
        threshold=response.threshold,
        target_fpr=response.target_fpr,
        kinds=tuple(response.kinds),
        model_fingerprint=response.model_fingerprint,
        versions=dict(response.versions),
        max_batch_size=response.max_batch_size,
    )


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    data = _read_file(Path(path), what)
    if b"-----BEGIN" not in data:
        raise InputError(f"{what} {path} is not a PEM file")
    return data


def channel_credentials(
    tls_ca_file: str | os.PathLike[str] | None = None,
    client_cert_file: str | os.PathLike[str] | None = None,
    client_key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials (None: plaintext). With only a client certificate the system's
    trusted roots verify the server."""
    if (client_cert_file is None) != (client_key_file is None):
        raise InputError("mutual TLS needs both a client certificate and its key")
    if tls_ca_file is None and client_cert_file is None:
        return None
    root = _read_pem(tls_ca_file, "CA certificate") if tls_ca_file is not None else None
    chain = key = None
    if client_cert_file is not None and client_key_file is not None:
        chain = _read_pem(client_cert_file, "client certificate")
        key = _read_pem(client_key_file, "client key")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )


class ReliabilityClient:
    """Calls one gradsentry sidecar at ``target`` ("host:port").

    TLS is used when ``tls_ca_file`` (PEM CA that signed the server's certificate) or a
    client certificate is given; ``client_cert_file`` + ``client_key_file`` authenticate
    this client to a server that requires mutual TLS. ``token`` is sent as
    ``authorization: Bearer <token>``. ``timeout`` (seconds) bounds every call.
    """

    def __init__(
        self,
        target: str,
        *,
        tls_ca_file: str | os.PathLike[str] | None = None,
        client_cert_file: str | os.PathLike[str] | None = None,
        client_key_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ValueError("token must be a non-empty string without whitespace")
        self.target = target
        self.timeout = float(timeout)
        credentials = channel_credentials(tls_ca_file, client_cert_file, client_key_file)
        self.secure = credentials is not None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token is not None else ()
        )
        self._channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = pb_grpc.ReliabilityStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> RequestError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return RequestError(code, details or "", self.target)

    def check(
        self,
        item: Input,
        *,
        return_probabilities: bool = False,
        return_features: bool = False,
        request_id: str = "",
    ) -> CheckResult:
        """Score one input (array, PNG/JPEG bytes or file path)."""
        request = to_request(item)
        request.return_probabilities = return_probabilities
        request.return_features = return_features
        request.request_id = request_id
        return result_from(self._call(self._stub.Check, request))

    def check_batch(
        self,
        items: Sequence[Input],
        *,
        return_probabilities: bool = False,
        return_features: bool = False,
    ) -> list[CheckResult]:
        """Score many inputs in one call; results in input order."""
        requests = []
        for i, item in enumerate(items):
            try:
                request = to_request(item)
            except InputError as exc:
                raise InputError(f"input {i}: {exc}") from None
            request.return_probabilities = return_probabilities
            request.return_features = return_features
            requests.append(request)
        if not requests:
            raise InputError("check_batch needs at least one input")
        reply = self._call(self._stub.CheckBatch, pb.CheckBatchRequest(requests=requests))
        return [result_from(r) for r in reply.responses]

    def check_stream(
        self,
        items: Iterable[Input],
        *,
        return_probabilities: bool = False,
        return_features: bool = False,
        timeout: float | None = None,
    ) -> Iterator[CheckResult]:
        """Score inputs on one ``CheckStream``: results in input order, each as soon as it is
        scored, while later inputs are still being sent (``items`` is read lazily).

        For a steady flow of inputs: a stream message costs the server much less than a
        call of its own (``benchmarks/load.py --rpc stream``). ``timeout`` bounds the whole
        stream (None: no deadline; the client's per-call timeout does not apply). An input
        that cannot be sent ends the stream after the results before it and raises
        InputError naming its index; an input the server refuses raises RequestError
        naming it ("stream message <index>").
        """
        failed: list[Exception] = []

        def requests() -> Iterator[pb.CheckRequest]:
            # gRPC reads this generator on its own thread and would only cancel the call
            # on an error: keep the error, end the stream, raise it here afterwards.
            index = 0
            try:
                for item in items:
                    request = to_request(item)
                    request.return_probabilities = return_probabilities
                    request.return_features = return_features
                    yield request
                    index += 1
            except InputError as exc:
                failed.append(InputError(f"input {index}: {exc}"))
            except Exception as exc:
                failed.append(exc)

        call = self._stub.CheckStream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for response in call:
                yield result_from(response)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()  # a no-op once the stream has ended; else the caller stopped early
        if failed:
            raise failed[0]

    def info(self) -> ServerInfo:
        """The server's model, input spec and detector metadata."""
        return info_from(self._call(self._stub.GetInfo, pb.GetInfoRequest()))

    def health(self, service: str = "") -> str:
        """Health status name ("SERVING", "NOT_SERVING", ...) of ``service`` ("" = server)."""
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> ReliabilityClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
