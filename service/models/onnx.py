"""ONNX classifiers: a torch twin for the gradients, checked against onnxruntime at load.

The twin (``service.models.onnx_twin``) holds the ONNX file's initializers as parameters of
standard torch modules, so the probe's per-sample norms are exact for those tensors. Before
it is accepted, its logits must equal onnxruntime's (CPU provider, the reference forward
pass of the same file) to ``tolerance`` (default 1e-4) on sample inputs; otherwise loading
is refused with the largest difference.

The input spec is the ``spec`` argument, else one derived from the graph's input (static
C, H, W and element type, values in [0, 1] as the project's image convention says). A graph
whose batch dimension is fixed is checked in batches of that size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort
import torch

from detectors.models import ModelLoadError
from service.models.common import finish, largest_difference, merge_labels, sample_inputs
from service.models.onnx_twin import OnnxTwin, convert
from service.models.registry import LoadedModel, register_loader
from service.spec import InputSpec, SpecError

if TYPE_CHECKING:
    import onnx

DEFAULT_TOLERANCE = 1e-4
# onnx.TensorProto.FLOAT and DOUBLE (the numbers are fixed by the ONNX standard).
_DTYPES = {1: "float32", 11: "float64"}


def read_model(path: Path) -> onnx.ModelProto:
    """The checked ONNX model at ``path``; any failure is a ModelLoadError."""
    import onnx  # only when an ONNX model is served (it costs ~1 s of start-up)

    if not path.is_file():
        raise ModelLoadError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf decode errors, checker errors, missing external data
        raise ModelLoadError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from None
    return model


def read_stated_spec(path: Path) -> dict[str, Any]:
    """``shape`` and ``dtype`` of the graph's input when C, H, W are static, else ``{}``
    (the registry's ``spec_reader``)."""
    _, spec = _graph_input(read_model(path), path)
    return {} if spec is None else {"shape": spec.shape, "dtype": spec.dtype}


@register_loader("onnx", spec_reader=read_stated_spec)
def load_onnx(
    *,
    path: str | Path,
    spec: InputSpec | None = None,
    device: str | torch.device = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
) -> LoadedModel:
    """The ONNX classifier at ``path`` as a verified torch twin (see module doc)."""
    path = Path(path)
    model = read_model(path)
    twin = convert(model)
    batch, graph_spec = _graph_input(model, path)
    if spec is None:
        spec = graph_spec
    elif graph_spec is not None and graph_spec.shape != spec.shape:
        raise ModelLoadError(
            f"{path.name} takes inputs of shape {list(graph_spec.shape)}, "
            f"the spec says {list(spec.shape)}"
        )
    if spec is None:
        raise ModelLoadError(
            f"{path.name} has dynamic image dimensions; give an input spec with the shape"
        )
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime cannot load {path}: {_first_line(exc)}") from None
    verify_twin(twin, session, spec, batch, tolerance, path.name)
    spec, labels = merge_labels(spec, None, "the spec")
    return finish(
        twin, spec, labels, f"onnx:{path} (torch twin)", device, f"ONNX model {path.name}"
    )


def verify_twin(
    twin: OnnxTwin,
    session: ort.InferenceSession,
    spec: InputSpec,
    batch: int | None,
    tolerance: float,
    what: str,
) -> None:
    """Refuse (ModelLoadError) unless ``twin`` and ``session`` give the same logits to
    ``tolerance`` on ``sample_inputs(spec)``, run in batches of ``batch`` when fixed."""
    # sample_inputs adds two constant images; make the total a multiple of a fixed batch.
    x = sample_inputs(spec) if batch is None else sample_inputs(spec, batch * -(-10 // batch) - 2)
    name = session.get_inputs()[0].name
    step = batch or len(x)
    reference, mine = [], []
    for i in range(0, len(x), step):
        chunk = x[i : i + step].contiguous()
        try:
            reference.append(torch.from_numpy(session.run(None, {name: chunk.numpy()})[0]))
        except Exception as exc:  # onnxruntime's own error types
            raise ModelLoadError(f"onnxruntime fails on {what}: {_first_line(exc)}") from None
        try:
            with torch.no_grad():
                mine.append(twin(chunk))
        except Exception as exc:  # a twin that cannot run is a conversion failure
            raise ModelLoadError(
                f"the torch twin of {what} fails on inputs of shape {list(chunk.shape)}: "
                f"{_first_line(exc)}"
            ) from None
    diff = largest_difference(torch.cat(reference), torch.cat(mine))
    if not diff <= tolerance:
        raise ModelLoadError(
            f"the torch twin of {what} differs from onnxruntime by up to {diff:.3g} "
            f"(> {tolerance:g}) on {len(x)} sample inputs; refusing to compute gradients of "
            "a model that is not the one served"
        )


def _graph_input(model: onnx.ModelProto, path: Path) -> tuple[int | None, InputSpec | None]:
    """(fixed batch size or None, spec from static C, H, W or None)."""
    inits = {i.name for i in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in inits)
    tensor_type = graph_input.type.tensor_type
    dtype = _DTYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise ModelLoadError(f"{path.name}: the input must be float32 or float64")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelLoadError(f"{path.name}: the input must be [B, C, H, W], has rank {len(dims)}")
    batch = dims[0] if dims[0] else None
    if any(d is None or d < 1 for d in dims[1:]):
        return batch, None
    try:
        return batch, InputSpec(shape=(dims[1], dims[2], dims[3]), dtype=dtype)  # type: ignore[arg-type]
    except SpecError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
