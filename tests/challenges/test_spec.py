"""Spec grammar, parameter typing and the error messages users see."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from detectors.challenges import (
    FGSM,
    PGD,
    Challenge,
    ChallengeContext,
    ChallengeError,
    Corruption,
    available,
    parse_spec,
    register,
)
from detectors.challenges import registry as registry_module
from detectors.challenges.spec import ParamValue


def test_parse_types_values_by_their_defaults() -> None:
    pgd = parse_spec("pgd:eps=0.25,steps=10,random_init=false")
    assert isinstance(pgd, PGD)
    assert pgd.params == {"eps": 0.25, "eps_step": 0.01, "steps": 10, "random_init": False}
    assert type(pgd.params["steps"]) is int and type(pgd.params["eps"]) is float
    assert not pgd.stochastic
    assert pgd.spec == "pgd:eps=0.25,eps_step=0.01,steps=10,random_init=false"


def test_parse_tolerates_spaces_and_int_for_float() -> None:
    fgsm = parse_spec(" fgsm : eps = 1 ")
    assert fgsm.params == {"eps": 1.0} and type(fgsm.params["eps"]) is float
    assert fgsm.spec == "fgsm:eps=1.0"


def test_bare_name_gives_defaults() -> None:
    corruption = parse_spec("corruption")
    assert corruption == Corruption()
    assert corruption.spec == "corruption:type=gaussian_noise,severity=3"


def test_corruption_spec_from_the_docs() -> None:
    c = parse_spec("corruption:type=glass_blur,severity=5")
    assert c.params == {"type": "glass_blur", "severity": 5}
    assert c.kind == "corrupted" and c.stochastic
    assert not parse_spec("corruption:type=contrast").stochastic


def test_string_values_keep_colons_and_equals(tmp_path: Path) -> None:
    path = tmp_path / "a=b:c.npz"
    np.savez(path, images=np.zeros((2, 8, 8), dtype=np.uint8))
    ood = parse_spec(f"ood:source={path}")
    assert ood.params == {"source": str(path)}
    assert parse_spec(ood.spec) == ood


def test_floats_round_trip_exactly() -> None:
    fgsm = FGSM(eps=0.1 + 0.2)
    assert parse_spec(fgsm.spec).params["eps"] == 0.1 + 0.2
    assert FGSM(eps=1e-7).spec == "fgsm:eps=1e-07"


def test_equality_and_hash_follow_the_spec() -> None:
    assert FGSM(eps=0.1) == parse_spec("fgsm:eps=0.1")
    assert FGSM(eps=0.1) != FGSM(eps=0.2)
    assert len({FGSM(eps=0.1), parse_spec("fgsm:eps=0.1")}) == 1
    assert repr(FGSM()) == "FGSM('fgsm:eps=0.2')"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ChallengeError, match="unknown challenge 'fgm'") as info:
        parse_spec("fgm:eps=0.1")
    for name in available():
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pgd:epsilon=0.1", r"unknown parameter 'epsilon' \(known: eps, eps_step, steps"),
        ("pgd:steps=1.5", r"steps='1.5' is not an integer"),
        ("pgd:eps=abc", r"eps='abc' is not a number"),
        ("pgd:random_init=maybe", r"random_init='maybe' is not true or false"),
        ("pgd:eps=nan", r"eps must be a finite number"),
        ("pgd:eps", r"'eps' is not of the form key=value"),
        ("pgd:eps=0.1,eps=0.2", r"'eps' given twice"),
        ("pgd:", r"nothing after ':'"),
        ("PGD", r"not a lower-case identifier"),
        ("", r"non-empty string"),
        ("fgsm:eps=0", r"fgsm: eps must be in \(0, 1\]"),
        ("bim:eps=0.1,eps_step=0.2", r"eps_step must be in \(0, eps\]"),
        ("corruption:severity=6", r"severity must be 1\.\.5"),
        ("corruption:type=rain", r"unknown type 'rain' \(known: gaussian_noise"),
        ("ood:source=nowhere/at/all.npz", r"neither a known source \(digits, gaussian"),
        ("cw:search_steps=0", r"search_steps must be >= 1"),
        ("hopskipjump:max_eval=10,init_eval=20", r"max_eval must be >= init_eval"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ChallengeError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eps": "0.1"}, "eps must be a number"),
        ({"eps": True}, "eps must be a number"),
        ({"epsilon": 0.1}, r"unknown parameter\(s\) epsilon"),
    ],
)
def test_constructor_checks_python_values(params: dict[str, ParamValue], message: str) -> None:
    with pytest.raises(ChallengeError, match=message):
        FGSM(**params)


def test_string_values_cannot_break_the_grammar() -> None:
    with pytest.raises(ChallengeError, match="without commas"):
        Corruption(type="gaussian_noise,severity=1")
    with pytest.raises(ChallengeError, match="must be an int"):
        Corruption(severity=2.0)


def test_register_adds_an_entry_that_parse_spec_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register
    class Invert(Challenge):
        name: ClassVar[str] = "invert"
        kind: ClassVar[str] = "corrupted"  # type: ignore[misc]
        defaults: ClassVar[dict[str, ParamValue]] = {"amount": 1.0}

        def _generate(self, ctx: ChallengeContext) -> np.ndarray:
            return np.abs(self._float("amount") - ctx.images)

    assert available()["invert"] is Invert
    challenge = parse_spec("invert:amount=0.5")
    images = np.full((2, 1, 4, 4), 0.25, dtype=np.float32)
    out = challenge.generate(ChallengeContext(images, None, None, seed=0))
    np.testing.assert_allclose(out, 0.25)
    with pytest.raises(ValueError, match="already registered"):

        @register
        class Other(Invert):
            pass


def test_register_rejects_malformed_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    class BadName(FGSM):
        name: ClassVar[str] = "Bad-Name"

    class BadKind(FGSM):
        name: ClassVar[str] = "bad_kind"
        kind: ClassVar[str] = "weird"  # type: ignore[assignment]

    with pytest.raises(ValueError, match="lower-case identifier"):
        register(BadName)
    with pytest.raises(ValueError, match="kind must be one of"):
        register(BadKind)
    with pytest.raises(TypeError, match="Challenge subclass"):
        register(int)  # type: ignore[type-var]
    assert "bad_kind" not in available()


def test_a_challenge_that_breaks_the_output_contract_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register
    class Cropper(Challenge):
        name: ClassVar[str] = "cropper"
        kind: ClassVar[str] = "corrupted"  # type: ignore[misc]

        def _generate(self, ctx: ChallengeContext) -> np.ndarray:
            return ctx.images[:, :, 1:]

    images = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(RuntimeError, match=r"cropper produced shape \(1, 1, 3, 4\)"):
        Cropper().generate(ChallengeContext(images, None, None, seed=0))


IMAGES = np.zeros((2, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": IMAGES.astype(np.float64)}, "expected a float32 array"),
        ({"images": IMAGES[:, 0]}, "expected a float32 array"),
        ({"images": IMAGES + 2}, r"values span \[2, 2\]"),
        ({"images": IMAGES[:0]}, "is empty"),
        ({"labels": np.zeros(3, dtype=np.int64)}, "there are 2 images"),
        ({"labels": np.zeros(2, dtype=np.float32)}, "labels must be integers"),
        ({"model": "resnet"}, "must be a torch nn.Module"),
        ({"seed": -1}, r"seed must be in 0\.\.4294967295"),
        ({"seed": 2**32}, r"seed must be in 0\.\.4294967295"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_context_validation(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"images": IMAGES, "labels": None, "model": None, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ChallengeError, match=message):
        ChallengeContext(**args)  # type: ignore[arg-type]
