"""The chart's KEDA ScaledObject: rendered by Helm's engine, checked against KEDA's own CRD
schema (an attributed copy in ``tests/deploy/crds/``), and its queries against the metrics
the server really exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.deploy.conftest import exported_metric_names, metric_names
from tests.deploy.test_helm import CHART, FULLNAME, NAMESPACE, render

CRD = Path(__file__).resolve().parent / "crds" / "keda.sh_scaledobjects.yaml"
KEDA = {"keda": {"enabled": True}}


def crd_schema(api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema KEDA serves for ``api_version`` (group/version)."""
    crd = yaml.safe_load(CRD.read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group
    (served,) = (v for v in crd["spec"]["versions"] if v["name"] == version and v["served"])
    return served["schema"]["openAPIV3Schema"]


def test_the_scaled_object_passes_kedas_schema() -> None:
    scaled = render(KEDA).one("ScaledObject")
    jsonschema.validate(scaled, crd_schema(scaled["apiVersion"]))
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == FULLNAME
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 10)
    assert {t["name"] for t in spec["triggers"]} == {"queue-depth", "in-flight"}


def test_the_schema_check_can_fail() -> None:
    scaled = render(KEDA).one("ScaledObject")
    scaled["spec"]["triggers"][0].pop("type")  # KEDA requires a trigger's type
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, crd_schema(scaled["apiVersion"]))


def test_keda_scales_on_metrics_the_server_exports() -> None:
    triggers = render(KEDA).one("ScaledObject")["spec"]["triggers"]
    exported = exported_metric_names()
    for trigger in triggers:
        query = trigger["metadata"]["query"]
        assert metric_names(query) <= exported, query
        assert f'namespace="{NAMESPACE}"' in query and f'job="{FULLNAME}"' in query
        assert float(trigger["metadata"]["threshold"]) > 0


def test_keda_owns_the_replica_count() -> None:
    release = render(KEDA)
    assert "replicas" not in release.one("Deployment")["spec"]
    assert not release.all("HorizontalPodAutoscaler")
    assert "replicas" in render(None).one("Deployment")["spec"]
    assert not render(None).all("ScaledObject")


def test_keda_and_the_hpa_together_are_refused() -> None:
    with pytest.raises(Exception, match="not both"):
        render({**KEDA, "autoscaling": {"enabled": True}})


def test_keda_values_are_checked_by_the_schema() -> None:
    with pytest.raises(Exception, match="keda"):
        render({"keda": {"enabled": True, "targetQueueDepth": 0}})


def test_lint_strict_with_keda() -> None:
    report = helm.lint(CHART, KEDA, strict=True)
    assert report["errors"] == [] and report["messages"] == [], report
