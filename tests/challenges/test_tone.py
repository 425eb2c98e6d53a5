"""The tone challenge: its closed formula, its ranges, and that it is not a no-op."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.challenges import ChallengeContext, ChallengeError, parse_spec


def test_tone_is_the_curve_then_the_haze() -> None:
    x = np.linspace(0, 1, 2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    out = parse_spec("tone:gamma=2.0,haze=0.4,level=0.25").generate(
        ChallengeContext(x, None, None, seed=0)
    )
    # float32 out of a float64 computation: one float32 rounding of values in [0, 1].
    np.testing.assert_allclose(out, 0.6 * x.astype(np.float64) ** 2 + 0.1, rtol=0, atol=1e-7)
    # The haze narrows the intensity range to 1 - haze, toward the level.
    assert out.min() == pytest.approx(0.1) and out.max() == pytest.approx(0.7)


def test_tone_is_deterministic_and_keeps_the_shape() -> None:
    x = np.random.default_rng(0).random((3, 1, 5, 5), dtype=np.float32)
    tone = parse_spec("tone:gamma=0.5,haze=0")
    a = tone.generate(ChallengeContext(x, None, None, seed=1))
    b = tone.generate(ChallengeContext(x, None, None, seed=2))
    assert not tone.stochastic and not tone.uses_model
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.sqrt(x.astype(np.float64)).astype(np.float32))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tone:gamma=0.05", "gamma must be in [0.1, 10]"),
        ("tone:haze=1.0", "haze must be in [0, 1)"),
        ("tone:level=2", "level must be in [0, 1]"),
        ("tone:gamma=1,haze=0", "leave the image as it is"),
    ],
)
def test_tone_refuses_what_is_out_of_range(spec: str, message: str) -> None:
    with pytest.raises(ChallengeError, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_spec(spec)
