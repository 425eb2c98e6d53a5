"""A torch copy of one exported detector head, built from the ONNX file's own weights.

The adaptive attack differentiates through H. H is defined by its ONNX graphs (that is
what the server runs with onnxruntime), so the copy is read from the graph itself: the
nodes that compute the ``probabilities`` output are evaluated in float64 torch, with the
initialisers and node attributes as constants. Only ops that skl2onnx emits for the
differentiable heads (standard scaler, logistic regression, MLP) are supported; a head
with any other op on that path (a tree ensemble, say) is refused with the op's name —
such a head has no useful gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from detectors.detector.runtime import PROBA_OUTPUT

ML = "ai.onnx.ml"


class UnsupportedOnnxError(ValueError):
    """The head's graph holds an op the torch copy cannot evaluate (or differentiate)."""


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _axes(node: onnx.NodeProto, inputs: list[Tensor | None]) -> list[int] | None:
    """ReduceSum's axes: an attribute before opset 13, an optional input since."""
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in inputs[1].reshape(-1).tolist()]
    axes = _attrs(node).get("axes")
    return None if axes is None else [int(a) for a in axes]  # type: ignore[union-attr]


def _reduce_sum(node: onnx.NodeProto, x: list[Tensor | None]) -> Tensor:
    axes = _axes(node, x)
    keep = bool(_attrs(node).get("keepdims", 1))
    assert x[0] is not None
    if axes is None:  # all axes (noop_with_empty_axes is 0 in everything skl2onnx writes)
        axes = list(range(x[0].dim()))
    return x[0].sum(dim=axes, keepdim=keep)


def _post_transform(name: bytes | str, scores: Tensor) -> Tensor:
    name = name.decode() if isinstance(name, bytes) else name
    if name == "NONE":
        return scores
    if name == "LOGISTIC":
        return torch.sigmoid(scores)
    if name == "SOFTMAX":
        return torch.softmax(scores, dim=1)
    raise UnsupportedOnnxError(f"post_transform {name!r} is not supported")


def _scaler(node: onnx.NodeProto, x: list[Tensor | None]) -> Tensor:
    a = _attrs(node)
    offset = torch.tensor(list(a.get("offset", [0.0])), dtype=torch.float64)  # type: ignore[arg-type]
    scale = torch.tensor(list(a.get("scale", [1.0])), dtype=torch.float64)  # type: ignore[arg-type]
    assert x[0] is not None
    return (x[0] - offset) * scale


def _linear_classifier(node: onnx.NodeProto, x: list[Tensor | None]) -> Tensor:
    """ai.onnx.ml LinearClassifier's scores output Z [N, C] (Y, the label, is not needed)."""
    a = _attrs(node)
    coef = torch.tensor(list(a["coefficients"]), dtype=torch.float64)  # type: ignore[arg-type]
    intercepts = torch.tensor(list(a.get("intercepts", [])), dtype=torch.float64)  # type: ignore[arg-type]
    assert x[0] is not None
    n_classes = len(intercepts) if len(intercepts) else coef.numel() // x[0].shape[1]
    scores = x[0] @ coef.reshape(n_classes, -1).T
    if len(intercepts):
        scores = scores + intercepts
    if n_classes == 1:  # binary: ONNX-ML's convention is [-s, s] before the post transform
        scores = torch.cat([-scores, scores], dim=1)
    return _post_transform(a.get("post_transform", b"NONE"), scores)  # type: ignore[arg-type]


def _gemm(node: onnx.NodeProto, x: list[Tensor | None]) -> Tensor:
    a = _attrs(node)
    A, B = x[0], x[1]
    assert A is not None and B is not None
    if a.get("transA", 0):
        A = A.T
    if a.get("transB", 0):
        B = B.T
    out = float(a.get("alpha", 1.0)) * (A @ B)  # type: ignore[arg-type]
    if len(x) > 2 and x[2] is not None:
        out = out + float(a.get("beta", 1.0)) * x[2]  # type: ignore[arg-type]
    return out


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda node, x: fn(x[0], x[1])


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda node, x: fn(x[0])


# (domain, op) -> (node, inputs) -> output 0. Everything runs in float64.
OPS: dict[tuple[str, str], Callable[[onnx.NodeProto, list[Tensor | None]], Tensor]] = {
    ("", "Sub"): _binary(torch.sub),
    ("", "Add"): _binary(torch.add),
    ("", "Mul"): _binary(torch.mul),
    ("", "Div"): _binary(torch.div),
    ("", "MatMul"): _binary(torch.matmul),
    ("", "Gemm"): _gemm,
    ("", "Sigmoid"): _unary(torch.sigmoid),
    ("", "Relu"): _unary(torch.relu),
    ("", "Tanh"): _unary(torch.tanh),
    ("", "Abs"): _unary(torch.abs),
    ("", "Identity"): _unary(lambda t: t),
    ("", "Cast"): _unary(lambda t: t.to(torch.float64)),
    ("", "Softmax"): lambda node, x: torch.softmax(x[0], dim=int(_attrs(node).get("axis", -1))),  # type: ignore[arg-type]
    ("", "ReduceSum"): _reduce_sum,
    ("", "Reshape"): lambda node, x: x[0].reshape([int(s) for s in x[1].tolist()]),  # type: ignore[union-attr]
    ("", "Concat"): lambda node, x: torch.cat(list(x), dim=int(_attrs(node)["axis"])),  # type: ignore[arg-type]
    (ML, "Scaler"): _scaler,
    (ML, "LinearClassifier"): _linear_classifier,
}


class OnnxHead(nn.Module):
    """``OnnxHead(model_bytes)(X)``: X float64 [N, F] -> probabilities float64 [N, C].

    The same function as onnxruntime's ``probabilities`` output of the head, evaluated with
    torch ops on the graph's own initialisers (differentiable in X).
    """

    def __init__(self, model_bytes: bytes, name: str = "head") -> None:
        super().__init__()
        model = onnx.load_from_string(bytes(model_bytes))
        graph = model.graph
        if len(graph.input) != 1:
            raise UnsupportedOnnxError(f"head {name!r} must take one input")
        self.name = name
        self.input_name = graph.input[0].name
        consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        producers = {out: node for node in graph.node for out in node.output}
        if PROBA_OUTPUT not in producers:
            raise UnsupportedOnnxError(f"head {name!r} has no {PROBA_OUTPUT!r} output")
        # The nodes the probabilities depend on, in graph (topological) order.
        needed: set[str] = set()
        stack = [PROBA_OUTPUT]
        while stack:
            tensor = stack.pop()
            node = producers.get(tensor)
            if node is None or node.name + "/" + tensor in needed:
                continue
            needed.add(node.name + "/" + tensor)
            stack.extend(i for i in node.input if i)
        self.nodes = [n for n in graph.node if any(n.name + "/" + o in needed for o in n.output)]
        for node in self.nodes:
            if (node.domain or "", node.op_type) not in OPS:
                raise UnsupportedOnnxError(
                    f"head {name!r}: op {node.domain + '.' if node.domain else ''}"
                    f"{node.op_type} on the path to {PROBA_OUTPUT!r} has no torch copy "
                    f"(supported: {sorted(op for _, op in OPS)})"
                )
        self._consts = {
            k: torch.from_numpy(np.asarray(v, dtype=np.float64 if v.dtype.kind == "f" else v.dtype))
            for k, v in consts.items()
        }

    def forward(self, X: Tensor) -> Tensor:
        values: dict[str, Tensor] = {**self._consts, self.input_name: X.to(torch.float64)}
        for node in self.nodes:
            inputs = [values[i] if i else None for i in node.input]
            values[node.output[0]] = OPS[(node.domain or "", node.op_type)](node, inputs)
        return values[PROBA_OUTPUT]
