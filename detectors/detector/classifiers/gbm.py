"""Gradient-boosted trees: a non-linear head that needs no feature scaling.

``GradientBoostingClassifier`` rather than ``HistGradientBoostingClassifier``: skl2onnx fails
to convert the latter on this stack, and converts the former exactly. scikit-learn's trees
compare float32 inputs against float64 thresholds, and skl2onnx writes float32 thresholds
adjusted to reproduce that, so the graph must feed the trees exactly what scikit-learn feeds
them: the features standardised in float64, then cast to float32. The explicit
``CastTransformer`` step does that cast in both worlds (in scikit-learn it changes nothing,
the trees cast anyway). Without it, a float64 graph input does not convert to a valid graph,
and a float32 input would run the scaler in float32 and send a few rows in 10^5 to the other
side of a split.
"""

from __future__ import annotations

import numpy as np
from skl2onnx.sklapi import CastTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from detectors.detector.classifiers.registry import register_classifier


@register_classifier("gbm")
def build_gbm(random_state: int) -> Pipeline:
    """StandardScaler + float32 cast + 100 depth-3 boosted trees (subsampled, seeded)."""
    clf = GradientBoostingClassifier(
        n_estimators=100,
        learning_rate=0.1,
        max_depth=3,
        subsample=0.8,
        random_state=random_state,
    )
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("cast", CastTransformer(dtype=np.float32)),
            ("gbm", clf),
        ]
    )
