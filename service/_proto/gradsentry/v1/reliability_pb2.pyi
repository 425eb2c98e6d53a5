from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    RELIABLE: _ClassVar[Verdict]
    FLAGGED: _ClassVar[Verdict]

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    ADVERSARIAL: _ClassVar[Kind]
    OOD: _ClassVar[Kind]
    CORRUPTED: _ClassVar[Kind]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
UINT8: DType
FLOAT16: DType
VERDICT_UNSPECIFIED: Verdict
RELIABLE: Verdict
FLAGGED: Verdict
KIND_UNSPECIFIED: Kind
ADVERSARIAL: Kind
OOD: Kind
CORRUPTED: Kind

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("tensor", "image", "return_probabilities", "return_features", "request_id")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    image: EncodedImage
    return_probabilities: bool
    return_features: bool
    request_id: str
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., image: _Optional[_Union[EncodedImage, _Mapping]] = ..., return_probabilities: _Optional[bool] = ..., return_features: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class CheckBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CheckRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[CheckRequest, _Mapping]]] = ...) -> None: ...

class CheckBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[CheckResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[CheckResponse, _Mapping]]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_seconds", "queue_seconds", "forward_seconds", "backward_seconds", "statistics_seconds", "detector_seconds")
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    decode_seconds: float
    queue_seconds: float
    forward_seconds: float
    backward_seconds: float
    statistics_seconds: float
    detector_seconds: float
    def __init__(self, decode_seconds: _Optional[float] = ..., queue_seconds: _Optional[float] = ..., forward_seconds: _Optional[float] = ..., backward_seconds: _Optional[float] = ..., statistics_seconds: _Optional[float] = ..., detector_seconds: _Optional[float] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("request_id", "predicted_class", "label", "probabilities", "verdict", "score", "threshold", "kind", "kind_scores", "features", "timings")
    class KindScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KIND_SCORES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    predicted_class: int
    label: str
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    verdict: Verdict
    score: float
    threshold: float
    kind: Kind
    kind_scores: _containers.ScalarMap[str, float]
    features: _containers.RepeatedScalarFieldContainer[float]
    timings: Timings
    def __init__(self, request_id: _Optional[str] = ..., predicted_class: _Optional[int] = ..., label: _Optional[str] = ..., probabilities: _Optional[_Iterable[float]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., kind: _Optional[_Union[Kind, str]] = ..., kind_scores: _Optional[_Mapping[str, float]] = ..., features: _Optional[_Iterable[float]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("shape", "dtype", "min_value", "max_value", "mean", "std")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    min_value: float
    max_value: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("input", "labels", "feature_names", "threshold", "target_fpr", "kinds", "model_fingerprint", "versions", "max_batch_size")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    input: InputSpec
    labels: _containers.RepeatedScalarFieldContainer[str]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    target_fpr: float
    kinds: _containers.RepeatedScalarFieldContainer[str]
    model_fingerprint: str
    versions: _containers.ScalarMap[str, str]
    max_batch_size: int
    def __init__(self, input: _Optional[_Union[InputSpec, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., feature_names: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ..., kinds: _Optional[_Iterable[str]] = ..., model_fingerprint: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., max_batch_size: _Optional[int] = ...) -> None: ...
