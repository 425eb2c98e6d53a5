"""A torch twin of an ONNX classifier graph, for exact gradients of the ONNX file's weights.

Each weighted ONNX node becomes the standard torch module the gradient probe has a norm rule
for (Conv -> ``nn.Conv{1,2,3}d``, BatchNormalization -> ``nn.BatchNorm{1,2,3}d``, Gemm and
MatMul(+Add) with a constant weight -> ``nn.Linear``) holding the initializers as parameters
and running statistics; the other nodes become plain tensor functions, and constants used as
tensors become buffers. The twin runs the nodes in graph order, so its parameters are the
ONNX file's and its features are exact per-sample norms of those tensors.

A weighted module is placed at the path its weight's (or bias's) initializer name gives when
that is a dotted state-dict name (``features.0.weight`` -> module ``features.0``, as the torch
exporter writes them), so the twin's parameter names equal the original model's; otherwise at
``<op>_<node index>``. Exporters that fold BatchNorm into the preceding Conv (torch's
default eval-mode export) leave fewer, fused parameters: the twin is exact for the file it is
given, but its features differ from the unfused eager model's, and a detector bundle must be
fitted on the twin.

Why not onnx2torch: it imports torchvision when imported, which does not install beside this
torch. Supported ops are listed in ``supported_ops()``; any other op is refused by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.models import ModelLoadError

if TYPE_CHECKING:  # onnx loads only when an ONNX model is served (it costs ~1 s)
    import onnx

_SEGMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)$")


class _Container(nn.Module):
    """Holds the modules and buffers under one path prefix; never called itself."""


@dataclass
class _Step:
    """One node at run time: ``env[output] = fn(*env[inputs])``."""

    op: str
    fn: Callable[..., Tensor]
    inputs: list[str]
    output: str


class OnnxTwin(nn.Module):
    """Runs a converted ONNX graph: one input tensor ``[B, ...]`` -> its one output."""

    def __init__(self, input_name: str, output_name: str) -> None:
        super().__init__()
        self.input_name = input_name
        self.output_name = output_name
        self._steps: list[_Step] = []
        self._buffer_of: dict[str, str] = {}  # ONNX value name -> buffer path

    def forward(self, x: Tensor) -> Tensor:
        env: dict[str, Tensor] = {n: self.get_buffer(p) for n, p in self._buffer_of.items()}
        env[self.input_name] = x
        for step in self._steps:
            env[step.output] = step.fn(*(env[n] for n in step.inputs))
        return env[self.output_name]


Converter = Callable[["_Builder", "onnx.NodeProto", int], None]
_CONVERTERS: dict[str, Converter] = {}


def _converts(*ops: str) -> Callable[[Converter], Converter]:
    def decorate(fn: Converter) -> Converter:
        for op in ops:
            _CONVERTERS[op] = fn
        return fn

    return decorate


def supported_ops() -> list[str]:
    """ONNX op types (default domain) the twin can represent."""
    return sorted(_CONVERTERS)


def convert(model: onnx.ModelProto) -> OnnxTwin:
    """Build the eval-mode twin of ``model``; ModelLoadError names anything unsupported."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelLoadError(
            f"the ONNX graph must have one input (the image batch) and one output (the logits), "
            f"it has inputs {inputs} and outputs {[o.name for o in graph.output]}"
        )
    unsupported = sorted(
        {
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in graph.node
            if n.domain not in ("", "ai.onnx") or n.op_type not in _CONVERTERS
        }
    )
    if unsupported:
        raise ModelLoadError(
            f"ONNX op(s) {unsupported} have no torch twin (supported: {', '.join(supported_ops())})"
        )
    builder = _Builder(OnnxTwin(inputs[0], graph.output[0].name), model, inits)
    for index, node in enumerate(graph.node):
        if index not in builder.skip:
            builder.check_inputs(node)
            _CONVERTERS[node.op_type](builder, node, index)
    if graph.output[0].name not in builder.produced:
        raise ModelLoadError(f"the ONNX output {graph.output[0].name!r} is computed by no node")
    return builder.twin.eval()


class _Builder:
    """Conversion state: constants, known values, the twin being filled."""

    def __init__(
        self, twin: OnnxTwin, model: onnx.ModelProto, inits: dict[str, np.ndarray]
    ) -> None:
        self.twin = twin
        self.consts: dict[str, np.ndarray] = dict(inits)
        self.initializers = set(inits)
        self.produced: set[str] = {twin.input_name}
        self.skip: set[int] = set()
        self.outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
        for index, node in enumerate(model.graph.node):
            for name in node.input:
                self.consumers.setdefault(name, []).append((index, node))
        self.ranks = _ranks(model)

    # -- values ---------------------------------------------------------------------------
    def check_inputs(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            if name and name not in self.produced and name not in self.consts:
                raise ModelLoadError(
                    f"ONNX node {node.name or node.op_type!r} reads {name!r} before any node "
                    "computes it (the graph is not topologically sorted)"
                )

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def tensor(self, name: str) -> str:
        """``name`` as a run-time value: constants become buffers (once)."""
        if name in self.produced or name in self.twin._buffer_of:
            return name
        value = torch.from_numpy(np.array(self.consts[name]))
        # A Constant node's value (a normalisation factor, a shape) is part of the graph, not
        # of the model's state: non-persistent, so it stays out of the state dict and the
        # fingerprint, which then equals the eager model's.
        path = self.attach_buffer(
            name,
            value,
            f"const_{len(self.twin._buffer_of)}",
            persistent=name in self.initializers,
        )
        self.twin._buffer_of[name] = path
        return name

    # -- placement ------------------------------------------------------------------------
    def _parent(self, path: str, create: bool) -> tuple[nn.Module, str] | None:
        """The container that would hold ``path``'s last segment, or None when it clashes."""
        parts = path.split(".")
        if not all(_SEGMENT.match(p) for p in parts):
            return None
        node: nn.Module = self.twin
        for part in parts[:-1]:
            child = node._modules.get(part)
            if child is None:
                if hasattr(node, part):
                    return None
                if not create:
                    return _Container(), parts[-1]  # a fresh container has room
                child = _Container()
                node.add_module(part, child)
            if not isinstance(child, _Container):
                return None
            node = child
        return (node, parts[-1]) if not hasattr(node, parts[-1]) else None

    def attach(self, preferred: str | None, module: nn.Module, fallback: str) -> str:
        for path in (preferred, fallback):
            if path and self._parent(path, create=False) is not None:
                parent, leaf = self._parent(path, create=True)  # type: ignore[misc]
                parent.add_module(leaf, module)
                return path
        raise ModelLoadError(f"cannot place the twin module for {fallback!r}")

    def attach_buffer(
        self, preferred: str, value: Tensor, fallback: str, persistent: bool = True
    ) -> str:
        for path in (preferred, fallback):
            if self._parent(path, create=False) is not None:
                parent, leaf = self._parent(path, create=True)  # type: ignore[misc]
                parent.register_buffer(leaf, value, persistent=persistent)
                return path
        raise ModelLoadError(f"cannot place the twin buffer for {preferred!r}")

    def step(self, op: str, fn: Callable[..., Tensor], inputs: list[str], output: str) -> None:
        self.twin._steps.append(_Step(op, fn, [self.tensor(n) for n in inputs], output))
        self.produced.add(output)

    def exclusive(self, node: onnx.NodeProto, *names: str) -> None:
        """Weights become one module's parameters: refuse initializers other nodes read too
        (per-sample norms of shared weights are not the sum of per-use norms)."""
        for name in names:
            users = self.consumers.get(name, []) if name else []
            if len(users) > 1:
                raise ModelLoadError(
                    f"ONNX {node.op_type} node {node.name!r}: initializer {name!r} is shared "
                    f"by {len(users)} nodes; shared weights are not supported"
                )

    def no_extra_outputs(self, node: onnx.NodeProto) -> None:
        used = [n for n in node.output[1:] if n and (n in self.consumers or n in self.outputs)]
        if used:
            raise ModelLoadError(
                f"ONNX {node.op_type} node {node.name!r}: optional outputs {used} are used; "
                "only the inference output is supported"
            )


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> tensor rank from ONNX shape inference (empty when inference fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a hint only; BatchNorm then assumes 4-D inputs
        return {}
    graph = inferred.graph
    ranks: dict[str, int] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            ranks[info.name] = len(tensor_type.shape.dim)
    return ranks


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _prefix(name: str, suffix: str) -> str | None:
    """``features.0.weight`` -> ``features.0`` (None unless ``name`` ends in ``.suffix``)."""
    return name[: -len(suffix) - 1] if name.endswith(f".{suffix}") else None


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(array)))


def _pads(node: onnx.NodeProto, attrs: dict[str, Any], k: int) -> tuple[list[int], list[int]]:
    """(begin, end) padding per spatial dim; SAME_* auto padding is refused."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto not in ("NOTSET", "VALID"):
        raise ModelLoadError(f"ONNX {node.op_type} node {node.name!r}: auto_pad={auto} unsupported")
    pads = list(attrs.get("pads", [0] * 2 * k)) if auto == "NOTSET" else [0] * 2 * k
    return pads[:k], pads[k:]


def _pad_list(begin: list[int], end: list[int]) -> list[int]:
    """ONNX (begin..., end...) -> F.pad's (last dim first) order."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def _refuse(node: onnx.NodeProto, why: str) -> ModelLoadError:
    return ModelLoadError(f"ONNX {node.op_type} node {node.name!r}: {why}")


# -- weighted nodes -----------------------------------------------------------------------
@_converts("Conv")
def _conv(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    w = b.const(node.input[1])
    bias = b.const(node.input[2]) if len(node.input) > 2 else None
    if w is None or (len(node.input) > 2 and node.input[2] and bias is None):
        raise _refuse(node, "weights and bias must be constant initializers")
    k = w.ndim - 2
    if k not in (1, 2, 3):
        raise _refuse(node, f"{k}-D convolution unsupported")
    if list(a.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        raise _refuse(node, "kernel_shape does not match the weight")
    begin, end = _pads(node, a, k)
    group = int(a.get("group", 1))
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[k - 1](
        w.shape[1] * group,
        w.shape[0],
        tuple(w.shape[2:]),
        stride=tuple(a.get("strides", [1] * k)),
        padding=tuple(begin) if begin == end else 0,
        dilation=tuple(a.get("dilations", [1] * k)),
        groups=group,
        bias=bias is not None,
    )
    b.exclusive(node, *node.input[1:3])
    conv.weight = _param(w)
    if bias is not None:
        conv.bias = _param(bias.reshape(-1))
    named = _prefix(node.input[1], "weight") or (
        _prefix(node.input[2], "bias") if bias is not None else None
    )
    b.attach(named, conv, f"conv_{index}")
    source = node.input[0]
    if begin != end:
        padded = f"{node.output[0]}/pad"
        flat = _pad_list(begin, end)
        b.step("Pad", lambda x: F.pad(x, flat), [source], padded)
        source = padded
    b.step("Conv", conv, [source], node.output[0])


@_converts("BatchNormalization")
def _batchnorm(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    arrays = [b.const(n) for n in node.input[1:5]]
    if len(arrays) != 4 or any(x is None for x in arrays):
        raise _refuse(node, "scale, bias, mean and var must be constant initializers")
    if a.get("training_mode", 0):
        raise _refuse(node, "training_mode=1 (batch statistics) cannot give per-sample features")
    b.no_extra_outputs(node)
    scale, shift, mean, var = (np.array(x).reshape(-1) for x in arrays)  # type: ignore[union-attr]
    rank = b.ranks.get(node.input[0], 4)
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 5: nn.BatchNorm3d}.get(rank, nn.BatchNorm2d)
    bn = cls(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
    b.exclusive(node, *node.input[1:5])
    bn.weight = _param(scale)
    bn.bias = _param(shift)
    bn.running_mean = torch.from_numpy(mean)
    bn.running_var = torch.from_numpy(var)
    b.attach(_prefix(node.input[1], "weight"), bn, f"batchnorm_{index}")
    b.step("BatchNormalization", bn, [node.input[0]], node.output[0])


@_converts("Gemm")
def _gemm(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    w = b.const(node.input[1])
    c = b.const(node.input[2]) if len(node.input) > 2 else None
    if w is None or w.ndim != 2 or (len(node.input) > 2 and node.input[2] and c is None):
        raise _refuse(node, "B (and C) must be constant initializers")
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise _refuse(node, "only transA=0, alpha=1, beta=1 are supported")
    weight = w if a.get("transB", 0) else w.T
    if c is not None and c.size != weight.shape[0]:
        raise _refuse(node, f"bias of shape {list(c.shape)} is not one value per output")
    names = (node.input[1], node.input[2] if c is not None else "")
    _linear(b, node, names, weight, c, node.input[0], node.output[0], index)


@_converts("MatMul")
def _matmul(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    w = b.const(node.input[1])
    if w is None or w.ndim != 2:
        b.step("MatMul", torch.matmul, list(node.input), node.output[0])
        return
    output, bias, bias_name = node.output[0], None, ""
    users = b.consumers.get(output, [])
    if len(users) == 1 and users[0][1].op_type == "Add" and output not in b.outputs:
        add_index, add = users[0]
        other = add.input[1] if add.input[0] == output else add.input[0]
        c = b.const(other)
        if c is not None and c.size == w.shape[1] and c.shape[-1:] == (w.shape[1],):
            bias, bias_name, output = c, other, add.output[0]
            b.skip.add(add_index)
    _linear(b, node, (node.input[1], bias_name), w.T, bias, node.input[0], output, index)


def _linear(
    b: _Builder,
    node: onnx.NodeProto,
    names: tuple[str, str],
    weight: np.ndarray,
    bias: np.ndarray | None,
    source: str,
    output: str,
    index: int,
) -> None:
    """nn.Linear with ``weight`` [out, in] and optional bias [out]; ``names`` are their
    initializer names (the module path comes from either, see the module doc)."""
    b.exclusive(node, *names)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = _param(np.ascontiguousarray(weight))
    if bias is not None:
        linear.bias = _param(bias.reshape(-1))
    named = _prefix(names[0], "weight") or _prefix(names[1], "bias")
    b.attach(named, linear, f"linear_{index}")
    b.step("Linear", linear, [source], output)


# -- unweighted nodes ---------------------------------------------------------------------
_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Identity": lambda x: x,
}


@_converts(*_UNARY)
def _unary(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    b.step(node.op_type, _UNARY[node.op_type], [node.input[0]], node.output[0])


@_converts("Dropout")
def _dropout(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    training = b.const(node.input[2]) if len(node.input) > 2 else None
    if training is not None and bool(training):
        raise _refuse(node, "training_mode=True")
    b.no_extra_outputs(node)
    b.step("Dropout", lambda x: x, [node.input[0]], node.output[0])  # inference: identity


@_converts("LeakyRelu")
def _leaky_relu(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    alpha = float(_attrs(node).get("alpha", 0.01))
    b.step("LeakyRelu", lambda x: F.leaky_relu(x, alpha), [node.input[0]], node.output[0])


@_converts("Clip")
def _clip(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    bounds: list[float | None] = [a.get("min"), a.get("max")]
    for k, name in enumerate(node.input[1:3]):
        if name:
            value = b.const(name)
            if value is None:
                raise _refuse(node, "min/max must be constants")
            bounds[k] = float(value)
    lo, hi = bounds
    b.step("Clip", lambda x: torch.clamp(x, lo, hi), [node.input[0]], node.output[0])


_BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    # ONNX Div truncates integers (shape arithmetic) and divides floats.
    "Div": lambda x, y: x / y if x.is_floating_point() else torch.div(x, y, rounding_mode="trunc"),
}


@_converts(*_BINARY)
def _binary(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    b.step(node.op_type, _BINARY[node.op_type], list(node.input[:2]), node.output[0])


@_converts("MaxPool", "AveragePool")
def _pool(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    kernel = list(a["kernel_shape"])
    k = len(kernel)
    if k not in (1, 2, 3):
        raise _refuse(node, f"{k}-D pooling unsupported")
    b.no_extra_outputs(node)
    strides = list(a.get("strides", [1] * k))
    ceil = bool(a.get("ceil_mode", 0))
    begin, end = _pads(node, a, k)
    pad = list(begin) if begin == end else [0] * k
    if node.op_type == "MaxPool":
        dilations = list(a.get("dilations", [1] * k))
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[k - 1]

        def fn(x: Tensor) -> Tensor:
            return pool(x, kernel, strides, pad, dilations, ceil_mode=ceil)

        fill = -math.inf
    else:
        include = bool(a.get("count_include_pad", 0))
        if begin != end and not include:
            raise _refuse(node, "asymmetric padding without count_include_pad unsupported")
        avg = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[k - 1]

        def fn(x: Tensor) -> Tensor:
            return avg(x, kernel, strides, pad, ceil_mode=ceil, count_include_pad=include)

        fill = 0.0
    flat = _pad_list(begin, end) if begin != end else []

    def padded(x: Tensor) -> Tensor:
        return fn(F.pad(x, flat, value=fill)) if flat else fn(x)

    b.step(node.op_type, padded, [node.input[0]], node.output[0])


@_converts("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    mean = node.op_type == "GlobalAveragePool"

    def fn(x: Tensor) -> Tensor:
        dims = tuple(range(2, x.dim()))
        return x.mean(dim=dims, keepdim=True) if mean else x.amax(dim=dims, keepdim=True)

    b.step(node.op_type, fn, [node.input[0]], node.output[0])


@_converts("Flatten")
def _flatten(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    axis = int(_attrs(node).get("axis", 1))

    def fn(x: Tensor) -> Tensor:
        ax = axis if axis >= 0 else axis + x.dim()
        return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))

    b.step("Flatten", fn, [node.input[0]], node.output[0])


def _target_shape(x: Tensor, shape: list[int], allowzero: bool) -> list[int]:
    """ONNX Reshape: 0 copies the input's dimension unless ``allowzero``."""
    return [x.shape[i] if s == 0 and not allowzero else s for i, s in enumerate(shape)]


@_converts("Reshape")
def _reshape(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    allowzero = bool(_attrs(node).get("allowzero", 0))
    shape = b.const(node.input[1])
    if shape is not None:
        fixed = [int(s) for s in shape.reshape(-1)]

        def static(x: Tensor) -> Tensor:
            return x.reshape(_target_shape(x, fixed, allowzero))

        b.step("Reshape", static, [node.input[0]], node.output[0])
        return

    def fn(x: Tensor, s: Tensor) -> Tensor:
        # One transfer of the whole shape (``int(v)`` per element would wait on the device
        # once per dimension).
        return x.reshape(_target_shape(x, s.reshape(-1).tolist(), allowzero))

    b.step("Reshape", fn, list(node.input[:2]), node.output[0])


@_converts("Shape")
def _shape(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    start, end = a.get("start", 0), a.get("end")

    def fn(x: Tensor) -> Tensor:
        return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)

    b.step("Shape", fn, [node.input[0]], node.output[0])


@_converts("Gather")
def _gather(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    axis = int(_attrs(node).get("axis", 0))

    def fn(data: Tensor, idx: Tensor) -> Tensor:
        ax = axis if axis >= 0 else axis + data.dim()
        flat = idx.reshape(-1).long()
        flat = torch.where(flat < 0, flat + data.shape[ax], flat)
        out = torch.index_select(data, ax, flat)
        return out.reshape((*data.shape[:ax], *idx.shape, *data.shape[ax + 1 :]))

    b.step("Gather", fn, list(node.input[:2]), node.output[0])


def _axes(b: _Builder, node: onnx.NodeProto) -> list[int] | None:
    """Axes from the attribute (opset < 13) or the constant second input."""
    attr = _attrs(node).get("axes")
    if attr is not None:
        return [int(v) for v in attr]
    if len(node.input) > 1 and node.input[1]:
        value = b.const(node.input[1])
        if value is None:
            raise _refuse(node, "axes must be constant")
        return [int(v) for v in value.reshape(-1)]
    return None


@_converts("Unsqueeze")
def _unsqueeze(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    axes = _axes(b, node) or []

    def fn(x: Tensor) -> Tensor:
        rank = x.dim() + len(axes)
        for ax in sorted(a if a >= 0 else a + rank for a in axes):
            x = x.unsqueeze(ax)
        return x

    b.step("Unsqueeze", fn, [node.input[0]], node.output[0])


@_converts("Squeeze")
def _squeeze(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    axes = _axes(b, node)

    def fn(x: Tensor) -> Tensor:
        if axes is None:
            return x.squeeze()
        return x.squeeze(tuple(a if a >= 0 else a + x.dim() for a in axes))

    b.step("Squeeze", fn, [node.input[0]], node.output[0])


@_converts("Concat")
def _concat(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    axis = int(_attrs(node)["axis"])
    b.step("Concat", lambda *xs: torch.cat(xs, dim=axis), list(node.input), node.output[0])


@_converts("Transpose")
def _transpose(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    perm = _attrs(node).get("perm")

    def fn(x: Tensor) -> Tensor:
        return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))

    b.step("Transpose", fn, [node.input[0]], node.output[0])


@_converts("Constant")
def _constant(b: _Builder, node: onnx.NodeProto, index: int) -> None:
    a = _attrs(node)
    if "value" in a:
        from onnx import numpy_helper

        value = numpy_helper.to_array(a["value"])
    elif any(k in a for k in ("value_float", "value_floats")):
        value = np.array(a.get("value_float", a.get("value_floats")), dtype=np.float32)
    elif any(k in a for k in ("value_int", "value_ints")):
        value = np.array(a.get("value_int", a.get("value_ints")), dtype=np.int64)
    else:
        raise _refuse(node, f"constant attribute {sorted(a)} unsupported")
    b.consts[node.output[0]] = value
