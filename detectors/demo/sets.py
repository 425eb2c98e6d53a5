"""What the demo detector is fitted on and what its report evaluates."""

from __future__ import annotations

from detectors.challenges.corruption import COMMON

#: H sees exactly these at fit time.
FIT_CHALLENGES: tuple[str, ...] = (
    "fgsm:eps=0.2",
    "corruption:type=gaussian_noise,severity=3",
    "ood:source=uniform",
)

#: Tone curves and hazes (toward grey, black and white), attribution-only generators of
#: both demos: photometric changes that none of the report's 15 corruptions makes, so the
#: head learns what a moved intensity range means.
TONES: tuple[str, ...] = (
    "tone:gamma=0.5,haze=0.3,level=0.5",
    "tone:gamma=2.0,haze=0.3,level=0.5",
    "tone:gamma=1.0,haze=0.6,level=0.3",
    "tone:gamma=1.0,haze=0.5,level=0.0",
    "tone:gamma=1.0,haze=0.5,level=1.0",
)

#: The views both demos' bundles carry: small-norm attacks (CW-L2, DeepFool) flip back
#: under a 3×3 median filter, photometric corruptions under a stretch of the range (two
#: more forward passes per request).
VIEWS: tuple[str, ...] = ("median", "stretch")

#: More generators per family for the kind-attribution head only (not the detection
#: heads); none of them is a set of the report, so its unseen sets stay unseen.
ATTRIBUTION_CHALLENGES: tuple[str, ...] = (
    "mim:eps=0.25,eps_step=0.025,steps=10",
    "corruption:type=speckle_noise,severity=2",
    "corruption:type=speckle_noise,severity=4",
    "corruption:type=gaussian_blur,severity=2",
    "corruption:type=gaussian_blur,severity=4",
    "corruption:type=spatter,severity=3",
    "ood:source=shapes",
    "ood:source=smooth",
    *TONES,
)

ATTACKS: tuple[tuple[str, str], ...] = (
    ("fgsm eps 0.1", "fgsm:eps=0.1"),
    ("fgsm eps 0.2", "fgsm:eps=0.2"),
    ("fgsm eps 0.3", "fgsm:eps=0.3"),
    ("bim", "bim"),
    ("pgd", "pgd"),
    ("carlini-wagner l2", "cw"),
    ("deepfool", "deepfool"),
    ("square", "square"),
)

OOD: tuple[tuple[str, str], ...] = (
    ("uniform noise", "ood:source=uniform"),
    ("gaussian noise", "ood:source=gaussian"),
    ("sklearn digits", "ood:source=digits"),
    ("skimage patches", "ood:source=skimage"),
)

SEVERITIES: tuple[int, ...] = (1, 3, 5)


def report_sets() -> list[tuple[str, str]]:
    """(name, spec) of every set in the demo report, attacks, corruptions, then OOD."""
    corruptions = [
        (f"{c} s{s}", f"corruption:type={c},severity={s}") for c in COMMON for s in SEVERITIES
    ]
    return [*ATTACKS, *corruptions, *OOD]
