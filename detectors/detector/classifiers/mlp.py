"""A small fully connected network, the H of the original paper."""

from __future__ import annotations

from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from detectors.detector.classifiers.registry import register_classifier


@register_classifier("mlp")
def build_mlp(random_state: int) -> Pipeline:
    """StandardScaler + MLP (64, 32) with ReLU, weight decay and seeded early stopping."""
    clf = MLPClassifier(
        hidden_layer_sizes=(64, 32),
        alpha=1e-3,
        learning_rate_init=1e-3,
        max_iter=500,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=random_state,
    )
    return Pipeline([("scale", StandardScaler()), ("mlp", clf)])
