"""TorchScript via an eager twin: exact features, and every way the twin can be refused."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from detectors.demo.model import MnistCNN
from detectors.probe import GradientProbe
from service.models import ModelLoadError, load
from service.models.common import largest_difference, sample_inputs
from service.models.torchscript import jit_load
from tests.service.models.artifacts import DEMO_FACTORY, SPEC, save_scripted, save_traced
from tests.service.models.nets import LeakyCNN, scriptable_demo


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory, demo: MnistCNN) -> Path:
    return save_traced(demo, tmp_path_factory.mktemp("ts") / "traced.pt")


def test_scripted_module_gives_the_eager_models_features(
    tmp_path: Path, images: torch.Tensor, demo_features: tuple[torch.Tensor, torch.Tensor]
) -> None:
    path = save_scripted(scriptable_demo(), tmp_path / "scripted.pt")
    loaded = load("torchscript", path=path, factory=DEMO_FACTORY, spec=SPEC)
    assert type(loaded.model) is MnistCNN
    _, features = GradientProbe(loaded.model).features(images)
    torch.testing.assert_close(features, demo_features[1], rtol=1e-4, atol=1e-4)


def test_without_a_factory_loading_is_refused_with_the_reason(traced: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load("torchscript", path=traced, spec=SPEC)
    message = str(info.value)
    assert "do not run Python forward hooks" in message
    assert "factory='package.module:callable'" in message


def test_a_factory_with_another_forward_is_refused_with_the_largest_difference(
    traced: Path, demo: MnistCNN
) -> None:
    with pytest.raises(ModelLoadError, match="differ from the TorchScript module's") as info:
        load("torchscript", path=traced, factory="tests.service.models.nets:build_leaky", spec=SPEC)
    leaky = LeakyCNN()
    leaky.load_state_dict(demo.state_dict())
    x = sample_inputs(SPEC)
    with torch.no_grad():
        expected = largest_difference(demo(x), leaky.eval()(x))
    reported = float(re.search(r"by up to ([0-9.e+-]+)", str(info.value)).group(1))  # type: ignore[union-attr]
    assert expected > 1e-5
    assert reported == pytest.approx(expected, rel=1e-2)


def test_another_architecture_is_refused_by_key_or_shape(traced: Path) -> None:
    five = "tests.service.models.nets:build_five_classes"
    with pytest.raises(
        ModelLoadError, match=r"shapes differ .*fc2.weight: \[10, 128\] vs \[5, 128\]"
    ):
        load("torchscript", path=traced, factory=five, spec=SPEC)
    with pytest.raises(ModelLoadError, match=r"not in the eager model: \['mean', 'std'"):
        load("torchscript", path=traced, factory="torch.nn:Identity", spec=SPEC)


def test_spec_and_a_readable_file_are_required(traced: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"an input spec .* is needed"):
        load("torchscript", path=traced, factory=DEMO_FACTORY)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(traced.read_bytes()[: traced.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cannot load TorchScript module"):
        load("torchscript", path=truncated, factory=DEMO_FACTORY, spec=SPEC)
    with pytest.raises(ModelLoadError, match="TorchScript file not found"):
        load("torchscript", path=tmp_path / "absent.pt", factory=DEMO_FACTORY, spec=SPEC)


def test_conversion_cost_at_load_time(
    traced: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measures the twin's one-off cost against loading the eager model from a state dict."""
    state = tmp_path / "state.pt"
    torch.save(jit_load(traced).state_dict(), state)

    def best_of(fmt: str, **options: object) -> tuple[float, torch.nn.Module]:
        times, model = [], None
        for _ in range(3):
            t0 = time.perf_counter()
            model = load(fmt, factory=DEMO_FACTORY, spec=SPEC, **options).model
            times.append(time.perf_counter() - t0)
        return min(times), model  # type: ignore[return-value]

    twin_s, twin = best_of("torchscript", path=traced)
    eager_s, eager = best_of("eager", path=state)
    for (name, a), b in zip(twin.state_dict().items(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with capsys.disabled():
        print(
            f"\n[torchscript twin] load {twin_s * 1e3:.1f} ms vs eager state dict "
            f"{eager_s * 1e3:.1f} ms (demo CNN, 1 thread)"
        )
