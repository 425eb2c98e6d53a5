"""Bad input: exit code 2, one ``error:`` line on stderr, and nothing written or replaced."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from detectors.bundle import model_fingerprint
from detectors.demo.model import build_model
from tests.cli.conftest import MODEL, Run, run_cli


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> file bytes (None for directories)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def _assert_refused(result: Run, command: str, *fragments: str) -> str:
    """Exit code 2 and exactly one stderr line ``gradsentry <command>: error: ...``."""
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    (line,) = lines
    assert line.startswith(f"gradsentry {command}: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in result.err
    assert result.out == ""
    return line


@pytest.fixture
def workdir(tmp_path: Path, weights: Path, fit_data: Path, bundle: Path) -> Path:
    """A scratch directory; each test checks it is unchanged after the refused command."""
    return tmp_path


def _fit(workdir: Path, *extra: str | Path, data: Path, weights: Path | None) -> Run:
    args: list[str | Path] = ["fit", "--model", MODEL, "--data", data]
    if weights is not None:
        args += ["--weights", weights]
    args += ["--out", workdir / "out", "--quiet", *extra]
    return run_cli(*args)


def _eval(workdir: Path, bundle: Path, *extra: str | Path, data: Path, weights: Path) -> Run:
    return run_cli(
        "eval", "--bundle", bundle, "--model", MODEL, "--weights", weights, "--data", data,
        "--report", workdir / "report", "--json", workdir / "eval.json", "--quiet", *extra,
    )  # fmt: skip


# --- fit ---------------------------------------------------------------------------------


def test_fit_missing_data_file(workdir: Path, weights: Path) -> None:
    missing = workdir / "no_such.npz"
    before = _tree(workdir)
    result = _fit(workdir, data=missing, weights=weights)
    _assert_refused(result, "fit", str(missing), "no such file")
    assert _tree(workdir) == before


def test_fit_images_of_the_wrong_shape(
    workdir: Path, weights: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    small = workdir / "small.npz"
    np.savez(small, images=np.zeros((30, 20, 20), np.uint8), labels=digits[1][:30])
    before = _tree(workdir)
    result = _fit(workdir, data=small, weights=weights)
    _assert_refused(result, "fit", "(1, 20, 20)", "does not fit the model")
    assert _tree(workdir) == before


def test_fit_unknown_challenge(workdir: Path, weights: Path, fit_data: Path) -> None:
    before = _tree(workdir)
    result = _fit(workdir, "--challenge", "fgsm", "--challenge", "fgsmx", data=fit_data,
                  weights=weights)  # fmt: skip
    _assert_refused(result, "fit", "unknown challenge 'fgsmx'", "known:", "pgd")
    assert _tree(workdir) == before


def test_fit_invalid_challenge_parameter(workdir: Path, weights: Path, fit_data: Path) -> None:
    result = _fit(workdir, "--challenge", "fgsm:eps=2", data=fit_data, weights=weights)
    _assert_refused(result, "fit", "eps must be in (0, 1]")
    assert not (workdir / "out").exists()


def test_fit_existing_out_is_left_byte_identical(
    workdir: Path, weights: Path, fit_data: Path, bundle: Path
) -> None:
    before = _tree(bundle)
    result = run_cli(
        "fit", "--model", MODEL, "--weights", weights, "--data", fit_data,
        "--out", bundle, "--quiet",
    )  # fmt: skip
    _assert_refused(result, "fit", str(bundle), "--overwrite")
    assert _tree(bundle) == before
    # No temporary siblings were left next to it either.
    assert sorted(p.name for p in bundle.parent.iterdir() if p.name.startswith(".")) == []


def test_fit_overwrite_refuses_a_directory_that_is_not_a_bundle(
    workdir: Path, weights: Path, fit_data: Path
) -> None:
    precious = workdir / "out"
    precious.mkdir()
    (precious / "notes.txt").write_text("not a bundle")
    before = _tree(workdir)
    result = _fit(
        workdir, "--challenge", "ood:source=uniform", "--target-fpr", "0.1", "--overwrite",
        data=fit_data, weights=weights,
    )  # fmt: skip
    _assert_refused(result, "fit", "refusing to replace")
    assert _tree(workdir) == before


def test_fit_corrupt_weights_file(workdir: Path, fit_data: Path) -> None:
    corrupt = workdir / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch checkpoint" * 4)
    before = _tree(workdir)
    result = _fit(workdir, data=fit_data, weights=corrupt)
    _assert_refused(result, "fit", "cannot read weights", str(corrupt))
    assert _tree(workdir) == before


def test_fit_weights_of_another_architecture(workdir: Path, fit_data: Path) -> None:
    five = workdir / "five_classes.pt"
    torch.save(build_model(num_classes=5).state_dict(), five)
    before = _tree(workdir)
    result = _fit(workdir, data=fit_data, weights=five)
    _assert_refused(result, "fit", "does not fit", MODEL)
    assert _tree(workdir) == before


def test_fit_missing_weights_file(workdir: Path, fit_data: Path) -> None:
    result = _fit(workdir, data=fit_data, weights=workdir / "gone.pt")
    _assert_refused(result, "fit", "weights file not found")
    assert not (workdir / "out").exists()


def test_fit_unimportable_model_factory(workdir: Path, fit_data: Path, weights: Path) -> None:
    result = run_cli(
        "fit", "--model", "no_such_package.models:build", "--weights", weights,
        "--data", fit_data, "--out", workdir / "out", "--quiet",
    )  # fmt: skip
    _assert_refused(result, "fit", "cannot import model factory")
    assert not (workdir / "out").exists()


def test_fit_data_without_labels(workdir: Path, weights: Path) -> None:
    unlabelled = workdir / "unlabelled.npz"
    np.savez(unlabelled, images=np.zeros((10, 28, 28), np.uint8))
    result = _fit(workdir, data=unlabelled, weights=weights)
    _assert_refused(result, "fit", "has no labels")
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("fpr", ["0", "1", "1.5"])
def test_fit_target_fpr_out_of_range(
    workdir: Path, weights: Path, fit_data: Path, fpr: str
) -> None:
    result = _fit(workdir, "--target-fpr", fpr, data=fit_data, weights=weights)
    _assert_refused(result, "fit", "--target-fpr")
    assert not (workdir / "out").exists()


# --- eval --------------------------------------------------------------------------------


def test_eval_bundle_fitted_for_other_weights(
    workdir: Path,
    bundle: Path,
    other_weights: Path,
    test_data: Path,
    digits_model: torch.nn.Module,
) -> None:
    before = _tree(workdir)
    result = _eval(workdir, bundle, "--set", "fgsm", data=test_data, weights=other_weights)
    line = _assert_refused(result, "eval", "fitted for model")
    # Both fingerprints are named (abbreviated), so the user can tell which is which.
    assert model_fingerprint(digits_model)[:19] in line
    assert len(re.findall(r"sha256:[0-9a-f]{12}", line)) == 2
    assert _tree(workdir) == before


def test_eval_unknown_challenge(
    workdir: Path, bundle: Path, weights: Path, test_data: Path
) -> None:
    before = _tree(workdir)
    result = _eval(workdir, bundle, "--set", "fgsm", "--set", "bad=nosuchattack:eps=0.1",
                   data=test_data, weights=weights)  # fmt: skip
    _assert_refused(result, "eval", "unknown challenge 'nosuchattack'")
    assert _tree(workdir) == before


def test_eval_missing_data_file(workdir: Path, bundle: Path, weights: Path) -> None:
    result = _eval(workdir, bundle, "--set", "fgsm", data=workdir / "nope.npz", weights=weights)
    _assert_refused(result, "eval", "no such file")
    assert list(workdir.iterdir()) == []


def test_eval_images_of_the_wrong_shape(
    workdir: Path, bundle: Path, weights: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    small = workdir / "small.npz"
    np.savez(small, images=np.zeros((30, 1, 20, 20), np.float32), labels=digits[1][:30])
    before = _tree(workdir)
    result = _eval(workdir, bundle, "--set", "fgsm", data=small, weights=weights)
    _assert_refused(result, "eval", "(1, 20, 20)")
    assert _tree(workdir) == before


def test_eval_missing_bundle(workdir: Path, weights: Path, test_data: Path) -> None:
    result = _eval(workdir, workdir / "no_bundle", "--set", "fgsm", data=test_data,
                   weights=weights)  # fmt: skip
    _assert_refused(result, "eval", "no bundle directory")
    assert list(workdir.iterdir()) == []


def test_eval_corrupt_bundle_head(
    workdir: Path, bundle: Path, weights: Path, test_data: Path
) -> None:
    import shutil

    damaged = workdir / "damaged"
    shutil.copytree(bundle, damaged)
    head = next(damaged.glob("*.onnx"))
    head.write_bytes(head.read_bytes()[:-10])
    before = _tree(workdir)
    result = _eval(workdir, damaged, "--set", "fgsm", data=test_data, weights=weights)
    _assert_refused(result, "eval", "corrupt")
    assert _tree(workdir) == before


def test_eval_duplicate_set_names(
    workdir: Path, bundle: Path, weights: Path, test_data: Path
) -> None:
    result = _eval(workdir, bundle, "--set", "a=fgsm", "--set", "a=ood:source=uniform",
                   data=test_data, weights=weights)  # fmt: skip
    _assert_refused(result, "eval", "'a' is given twice")
    assert list(workdir.iterdir()) == []


def test_eval_unknown_baseline(workdir: Path, bundle: Path, weights: Path, test_data: Path) -> None:
    result = _eval(workdir, bundle, "--set", "fgsm", "--baselines", "msp,deep_svdd",
                   data=test_data, weights=weights)  # fmt: skip
    _assert_refused(result, "eval", "unknown baseline(s) ['deep_svdd']")
    assert list(workdir.iterdir()) == []
