"""Logistic regression on standardised (log-)features: the cheap, strong default head."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from detectors.detector.classifiers.registry import register_classifier


@register_classifier("logistic")
def build_logistic(random_state: int) -> Pipeline:
    """StandardScaler + L2 logistic regression (C=1); multinomial for more than two classes."""
    # max_iter is generous because lbfgs on weighted, correlated features can converge slowly.
    clf = LogisticRegression(C=1.0, max_iter=10_000, random_state=random_state)
    return Pipeline([("scale", StandardScaler()), ("logistic", clf)])
