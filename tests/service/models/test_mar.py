"""TorchServe .mar archives in torch-model-archiver's layout, built from the demo model."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from detectors.demo.model import MnistCNN
from detectors.probe import GradientProbe
from service.models import ModelLoadError, load
from service.spec import InputSpec
from tests.service.models.artifacts import (
    DEMO_FACTORY,
    DIGIT_NAMES,
    HANDLER,
    SPEC,
    demo_source,
    eager_mar_files,
    manifest,
    save_traced,
    write_mar,
)


def _features_match(model: torch.nn.Module, images: torch.Tensor, reference: torch.Tensor) -> None:
    _, features = GradientProbe(model).features(images)
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)


def test_eager_archive_with_labels(tmp_path: Path) -> None:
    path = write_mar(tmp_path / "mnist.mar", eager_mar_files(), manifest())
    loaded = load("mar", path=path, spec=SPEC)
    assert loaded.labels == DIGIT_NAMES
    assert loaded.spec is not None and loaded.spec.labels == tuple(DIGIT_NAMES)
    assert type(loaded.model).__name__ == "MnistCNN"
    assert "mnist 1.0, eager, class MnistCNN from model.py" in loaded.source


def test_spec_and_imagenet_style_labels_from_the_archive(tmp_path: Path) -> None:
    files = eager_mar_files(labels=False)
    files["index_to_name.json"] = json.dumps(
        {str(i): [f"n{i:08d}", n] for i, n in enumerate(DIGIT_NAMES)}
    )
    files["input_spec.json"] = json.dumps({"shape": [1, 28, 28], "value_range": [0, 1]})
    loaded = load("mar", path=write_mar(tmp_path / "m.mar", files, manifest()))
    assert loaded.labels == DIGIT_NAMES
    assert loaded.spec == InputSpec(labels=tuple(DIGIT_NAMES))
    files["input_spec.json"] = json.dumps({"shape": [1, 28.5, 28]})
    with pytest.raises(ModelLoadError, match=r"input_spec.json: shape must be a list of numbers"):
        load("mar", path=write_mar(tmp_path / "bad.mar", files, manifest()))
    files["input_spec.json"] = json.dumps({"shape": [1, 28, 28], "mean": [0.5]})
    with pytest.raises(ModelLoadError, match="mean and std must both be set"):
        load("mar", path=write_mar(tmp_path / "bad2.mar", files, manifest()))


def test_torchscript_archive_uses_the_archived_model_file_or_a_factory(
    tmp_path: Path,
    demo: MnistCNN,
    images: torch.Tensor,
    demo_features: tuple[torch.Tensor, torch.Tensor],
) -> None:
    scripted = save_traced(demo, tmp_path / "traced.pt").read_bytes()
    with_file = {"model.pt": scripted, "model.py": demo_source(), "handler.py": HANDLER}
    loaded = load("mar", path=write_mar(tmp_path / "a.mar", with_file, manifest()), spec=SPEC)
    assert "torchscript, class MnistCNN from model.py" in loaded.source
    _features_match(loaded.model, images, demo_features[1])

    bare = write_mar(
        tmp_path / "b.mar", {"model.pt": scripted, "handler.py": HANDLER}, manifest(model_file=None)
    )
    with pytest.raises(
        ModelLoadError, match="TorchScript module and the manifest names no modelFile"
    ):
        load("mar", path=bare, spec=SPEC)
    loaded = load("mar", path=bare, factory=DEMO_FACTORY, spec=SPEC)
    assert f"factory {DEMO_FACTORY}" in loaded.source
    _features_match(loaded.model, images, demo_features[1])
    with pytest.raises(ModelLoadError, match="differ from the TorchScript module's by up to"):
        load("mar", path=bare, factory="tests.service.models.nets:build_leaky", spec=SPEC)


def test_missing_serialized_file_is_named(tmp_path: Path) -> None:
    files = eager_mar_files()
    del files["model.pt"]
    with pytest.raises(ModelLoadError, match=r"serializedFile 'model.pt', but the archive has no"):
        load("mar", path=write_mar(tmp_path / "a.mar", files, manifest()), spec=SPEC)
    no_key = write_mar(tmp_path / "b.mar", eager_mar_files(), manifest(serialized=None))
    with pytest.raises(ModelLoadError, match="names no serializedFile"):
        load("mar", path=no_key, spec=SPEC)
    files = eager_mar_files()
    files["model.pt"] = b"raw bytes, not a torch file"
    with pytest.raises(ModelLoadError, match="neither a TorchScript module nor a torch state dict"):
        load("mar", path=write_mar(tmp_path / "c.mar", files, manifest()), spec=SPEC)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../evil.py", "'..' path component"),
        ("/tmp/evil.py", "absolute path"),
        ("sub/../../evil.py", "'..' path component"),
        ("C:/evil.py", "absolute path"),
    ],
)
def test_unsafe_entry_paths_refuse_the_whole_archive(
    tmp_path: Path, entry: str, reason: str
) -> None:
    files = {**eager_mar_files(), entry: "raise SystemExit('escaped')"}
    path = write_mar(tmp_path / "evil.mar", files, manifest())
    with pytest.raises(ModelLoadError, match=rf"unsafe entry '{entry}' \({reason}\)"):
        load("mar", path=path, spec=SPEC)  # refused before anything is extracted or run


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    path = write_mar(tmp_path / "a.mar", eager_mar_files(), manifest())
    link = zipfile.ZipInfo("model_link.py")
    link.external_attr = 0o120777 << 16  # a symbolic link, as zip stores it
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ModelLoadError, match=r"unsafe entry 'model_link.py' \(symbolic link\)"):
        load("mar", path=path, spec=SPEC)


def test_corrupt_archives_are_load_errors(tmp_path: Path) -> None:
    good = write_mar(tmp_path / "good.mar", eager_mar_files(), manifest())
    truncated = tmp_path / "truncated.mar"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ModelLoadError, match="not a readable zip archive"):
        load("mar", path=truncated, spec=SPEC)
    # A stored (uncompressed) archive with one flipped byte inside model.pt: bad CRC.
    stored = tmp_path / "stored.mar"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        for name, data in eager_mar_files().items():
            archive.writestr(name, data)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest()))
    raw = bytearray(stored.read_bytes())
    weights = eager_mar_files()["model.pt"]
    at = raw.find(weights) + len(weights) // 2  # type: ignore[arg-type]
    raw[at] ^= 0xFF
    stored.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"is corrupt \(model.pt: Bad CRC-32"):
        load("mar", path=stored, spec=SPEC)


def test_weights_that_do_not_fit_the_model_file(tmp_path: Path) -> None:
    files = eager_mar_files()
    buffer = tmp_path / "five.pt"
    torch.save(MnistCNN(num_classes=5).state_dict(), buffer)
    files["model.pt"] = buffer.read_bytes()
    with pytest.raises(ModelLoadError, match=r"model.pt\) does not fit MnistCNN: Error"):
        load("mar", path=write_mar(tmp_path / "a.mar", files, manifest()), spec=SPEC)


def test_model_class_choice_and_failing_model_files(tmp_path: Path) -> None:
    files = eager_mar_files()
    files["model.py"] = demo_source() + "\n\nclass Other(nn.Module):\n    pass\n"
    two = write_mar(tmp_path / "two.mar", files, manifest())
    with pytest.raises(
        ModelLoadError, match=r"exactly one nn.Module subclass, found \['MnistCNN', 'Other'\]"
    ):
        load("mar", path=two, spec=SPEC)
    assert (
        type(load("mar", path=two, model_class="MnistCNN", spec=SPEC).model).__name__ == "MnistCNN"
    )
    with pytest.raises(ModelLoadError, match=r"defines no nn.Module subclass 'Net'"):
        load("mar", path=two, model_class="Net", spec=SPEC)
    files["model.py"] = "raise RuntimeError('boom')\n"
    with pytest.raises(ModelLoadError, match=r"model.py' fails to import: RuntimeError: boom"):
        load("mar", path=write_mar(tmp_path / "boom.mar", files, manifest()), spec=SPEC)
    no_model_file = write_mar(tmp_path / "sd.mar", eager_mar_files(), manifest(model_file=None))
    with pytest.raises(
        ModelLoadError, match="holds a state dict but the manifest names no modelFile"
    ):
        load("mar", path=no_model_file, spec=SPEC)


def test_model_file_may_import_archived_helpers(tmp_path: Path) -> None:
    files = eager_mar_files()
    files["gs_helpers.py"] = "WIDTH = 10\n"
    files["model.py"] = (
        demo_source()
        .replace("import torch\n", "import torch\nfrom gs_helpers import WIDTH\n", 1)
        .replace("num_classes: int = 10", "num_classes: int = WIDTH")
    )
    loaded = load("mar", path=write_mar(tmp_path / "a.mar", files, manifest()), spec=SPEC)
    assert loaded.model.fc2.out_features == 10
    assert "gs_helpers" not in sys.modules  # another archive's helper of that name is not shadowed


def test_configured_labels_win_and_every_label_count_is_checked(tmp_path: Path) -> None:
    path = write_mar(tmp_path / "a.mar", eager_mar_files(), manifest())
    other = InputSpec(labels=tuple(str(d) for d in range(10)))
    loaded = load("mar", path=path, spec=other)
    assert loaded.labels == list(other.labels) and loaded.spec == other  # not the archive's
    assert load("mar", path=path, spec=InputSpec()).labels == DIGIT_NAMES
    with pytest.raises(ModelLoadError, match="returns 10 logits but 2 labels are given"):
        load("mar", path=path, spec=InputSpec(labels=("a", "b")))
    files = eager_mar_files()
    files["index_to_name.json"] = json.dumps({"0": "zero", "2": "two"})
    with pytest.raises(ModelLoadError, match=r"keys must be 0 .. 1 without gaps"):
        load("mar", path=write_mar(tmp_path / "b.mar", files, manifest()), spec=SPEC)
    files["index_to_name.json"] = json.dumps({"0": "zero", "1": "one"})
    with pytest.raises(ModelLoadError, match="returns 10 logits but 2 labels are given"):
        load("mar", path=write_mar(tmp_path / "c.mar", files, manifest()), spec=SPEC)
