"""ONNX through a torch twin checked against onnxruntime: exact gradients of the file's weights."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from detectors.demo.model import MnistCNN
from detectors.probe import GradientProbe
from service.models import ModelLoadError, load
from service.models.common import largest_difference, sample_inputs
from service.models.onnx import verify_twin
from service.models.onnx_twin import convert
from service.spec import InputSpec
from tests.probe.reference import reference_features
from tests.service.models.artifacts import SPEC, export_onnx
from tests.service.models.nets import ops_net


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory, demo: MnistCNN) -> Path:
    return export_onnx(demo, tmp_path_factory.mktemp("onnx") / "mnist.onnx")


def test_twin_keeps_the_state_dict_names_and_derives_the_spec(demo_onnx: Path) -> None:
    loaded = load("onnx", path=demo_onnx)
    assert loaded.spec == InputSpec()  # static [1, 28, 28] float32 from the graph input
    assert loaded.labels is None
    names = [n for n, _ in loaded.model.named_parameters()]
    assert names == [n for n, _ in MnistCNN().named_parameters()]
    assert names[:3] == ["features.0.weight", "features.1.weight", "features.1.bias"]
    assert type(loaded.model.get_submodule("features.1")) is nn.BatchNorm2d


def test_folded_batchnorm_export_gives_exact_features_of_the_files_weights(
    tmp_path: Path, demo: MnistCNN, images: torch.Tensor
) -> None:
    """The exporter's eval default folds BatchNorm into Conv: another parametrisation, whose
    per-sample features the twin still computes exactly (against a one-sample reference)."""
    loaded = load("onnx", path=export_onnx(demo, tmp_path / "folded.onnx", keep_batchnorm=False))
    names = [n for n, _ in loaded.model.named_parameters()]
    assert names[:2] == ["conv_2.weight", "conv_2.bias"] and len(names) == 8
    probe = GradientProbe(loaded.model)
    logits, features = probe.features(images[:4])
    with torch.no_grad():
        torch.testing.assert_close(logits, demo(images[:4]), rtol=1e-4, atol=1e-4)
    expected = reference_features(loaded.model, images[:4], probe.feature_names)
    torch.testing.assert_close(features.double(), expected, rtol=1e-4, atol=1e-6)


def test_more_ops_convert_with_exact_features(tmp_path: Path, images: torch.Tensor) -> None:
    model = ops_net()
    loaded = load("onnx", path=export_onnx(model, tmp_path / "ops.onnx"))
    ops = {n.op_type for n in onnx.load(str(tmp_path / "ops.onnx")).graph.node}
    assert {"MatMul", "Add", "AveragePool", "LeakyRelu", "Sigmoid", "Reshape"} <= ops
    logits, features = GradientProbe(loaded.model).features(images)
    ref_logits, ref_features = GradientProbe(model).features(images)
    assert [n for n, _ in loaded.model.named_parameters()] == [
        n for n, _ in model.named_parameters()
    ]  # MatMul's weight is unnamed; the fused Add's bias names the module
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features, ref_features, rtol=1e-4, atol=1e-4)


def _padded_graph(path: Path) -> Path:
    """Hand-built graph: asymmetric Conv and MaxPool padding, Gemm with transB=0."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(2 * 4 * 4, 3)).astype(np.float32)
    pool = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0]}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["c"], ["p"], **pool),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "padded",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_asymmetric_padding_and_untransposed_gemm(tmp_path: Path) -> None:
    path = _padded_graph(tmp_path / "padded.onnx")
    loaded = load("onnx", path=path)
    assert loaded.spec is not None and loaded.spec.shape == (1, 8, 8)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(x), torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        )
    names = [n for n, _ in loaded.model.named_parameters()]
    assert names == ["conv_0.weight", "linear_3.weight"]
    assert loaded.model.get_parameter("linear_3.weight").shape == (3, 32)


def test_a_twin_that_differs_from_onnxruntime_is_refused_with_the_largest_difference(
    demo_onnx: Path,
) -> None:
    twin = convert(onnx.load(str(demo_onnx)))
    session = ort.InferenceSession(str(demo_onnx), providers=["CPUExecutionProvider"])
    verify_twin(twin, session, SPEC, None, 1e-4, "mnist.onnx")  # faithful: accepted
    with torch.no_grad():
        twin.get_parameter("fc2.bias")[3] += 0.01
    x = sample_inputs(SPEC)
    with torch.no_grad():
        expected = largest_difference(
            twin(x), torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
        )
    with pytest.raises(ModelLoadError, match="differs from onnxruntime by up to") as info:
        verify_twin(twin, session, SPEC, None, 1e-4, "mnist.onnx")
    reported = float(re.search(r"up to ([0-9.e+-]+) \(> 0.0001\)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert reported == pytest.approx(expected, rel=1e-2) and expected > 1e-4


def test_fixed_batch_graphs_are_checked_in_batches_of_that_size(
    tmp_path: Path, demo: MnistCNN
) -> None:
    path = export_onnx(demo, tmp_path / "fixed.onnx", dynamic_batch=False)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    loaded = load("onnx", path=path)
    x = sample_inputs(SPEC)
    with torch.no_grad():  # the twin itself takes any batch size
        torch.testing.assert_close(loaded.model(x), demo(x), rtol=1e-5, atol=1e-5)


def test_refusals_name_the_problem(tmp_path: Path, demo_onnx: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf model")
    with pytest.raises(ModelLoadError, match="is not a valid ONNX model"):
        load("onnx", path=garbage)
    with pytest.raises(ModelLoadError, match="ONNX file not found"):
        load("onnx", path=tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match=r"shape \[1, 28, 28\], the spec says \[1, 32, 32\]"):
        load("onnx", path=demo_onnx, spec=replace(SPEC, shape=(1, 32, 32)))
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    shared = helper.make_graph(
        [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "w"], ["h"]),
            helper.make_node("Gemm", ["h", "w"], ["y"]),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    model = helper.make_model(shared, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "shared.onnx"))
    with pytest.raises(ModelLoadError, match="initializer 'w' is shared by 2 nodes"):
        load("onnx", path=tmp_path / "shared.onnx")
    softmax = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(dim=1)).eval()
    with pytest.raises(ModelLoadError, match=r"ONNX op\(s\) \['Softmax'\] have no torch twin"):
        load("onnx", path=export_onnx(softmax, tmp_path / "softmax.onnx"))
