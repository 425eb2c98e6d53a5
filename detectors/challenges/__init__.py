"""Challenge generators: seeded adversarial, corrupted and out-of-distribution inputs.

Every entry is a registered ``Challenge``; build one from a spec string
(``parse_spec("pgd:eps=0.3,steps=40")``, grammar in ``spec``) or from its class, then
``generate(ChallengeContext(images, labels, model, seed))``. Entries are imported here
explicitly; a new challenge is one module plus one line below.
"""

from detectors.challenges.bim import BIM
from detectors.challenges.carlini_wagner import CarliniWagnerL2
from detectors.challenges.corruption import Corruption
from detectors.challenges.deepfool import DeepFoolAttack
from detectors.challenges.errors import ChallengeError
from detectors.challenges.fgsm import FGSM
from detectors.challenges.hop_skip_jump import HopSkipJumpAttack
from detectors.challenges.mim import MomentumIterative
from detectors.challenges.ood import OutOfDistribution
from detectors.challenges.pgd import PGD
from detectors.challenges.registry import (
    KINDS,
    Challenge,
    ChallengeContext,
    Kind,
    available,
    get_challenge,
    parse_spec,
    register,
)
from detectors.challenges.square import Square
from detectors.challenges.tone import Tone

__all__ = [
    "BIM",
    "FGSM",
    "KINDS",
    "PGD",
    "CarliniWagnerL2",
    "Challenge",
    "ChallengeContext",
    "ChallengeError",
    "Corruption",
    "DeepFoolAttack",
    "HopSkipJumpAttack",
    "Kind",
    "MomentumIterative",
    "OutOfDistribution",
    "Square",
    "Tone",
    "available",
    "get_challenge",
    "parse_spec",
    "register",
]
