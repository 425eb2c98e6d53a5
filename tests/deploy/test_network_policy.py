"""The chart's NetworkPolicy: the plain-HTTP metrics port for the peers of
``networkPolicy.metricsFrom`` only, the API ports for ``apiFrom`` (anyone when empty).

The rendered policy passes Kubernetes' schemas strictly, and is read with NetworkPolicy's
ingress rules (a pod selected by a policy takes a connection when some rule lists its port
and some peer of that rule matches the caller; ``matchLabels`` only, which is what the chart
renders) to say who may reach which port.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.test_helm import KUBE_VERSIONS, NAMESPACE, Release, render

ON = {"networkPolicy": {"enabled": True}}
PROMETHEUS = (
    {"kubernetes.io/metadata.name": "monitoring"},
    {"app.kubernetes.io/name": "prometheus"},
)
NEIGHBOUR = ({"kubernetes.io/metadata.name": NAMESPACE}, {"app": "pipeline"})


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels) against labels; an empty selector matches all."""
    wanted = (selector or {}).get("matchLabels", {})
    assert set(selector or {}) <= {"matchLabels"}, selector
    return wanted.items() <= labels.items()


def admits(
    policy: dict[str, Any], port: int, caller: tuple[dict[str, str], dict[str, str]]
) -> bool:
    """Whether ``policy``'s ingress rules let ``caller`` (namespace labels, pod labels)
    connect to TCP ``port`` of a pod it selects."""
    namespace, pod = caller
    for rule in policy["spec"].get("ingress", []):
        if not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"]):
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            ns_ok = (
                matches(peer["namespaceSelector"], namespace)
                if "namespaceSelector" in peer
                else namespace.get("kubernetes.io/metadata.name") == NAMESPACE
            )
            if ns_ok and matches(peer.get("podSelector"), pod):
                return True
    return False


def pod_labels(release: Release) -> dict[str, str]:
    return release.one("Deployment")["spec"]["template"]["metadata"]["labels"]


def test_off_by_default() -> None:
    assert render(None).all("NetworkPolicy") == []


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_policy_passes_kubernetes_validate_strict(kube: str) -> None:
    policy = render({**ON, "ports": {"grpc": 50051, "metrics": 9464, "rest": 8080}}).one(
        "NetworkPolicy"
    )
    kubernetes_validate.validate(policy, kube, strict=True)


def test_metrics_only_for_prometheus_api_for_anyone() -> None:
    release = render(ON)
    policy = release.one("NetworkPolicy")
    assert matches(policy["spec"]["podSelector"], pod_labels(release))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert admits(policy, 9464, PROMETHEUS)
    assert not admits(policy, 9464, NEIGHBOUR)
    assert admits(policy, 50051, NEIGHBOUR) and admits(policy, 50051, PROMETHEUS)
    assert not admits(policy, 8080, NEIGHBOUR)  # REST is off: its port stays closed


def test_api_peers_and_rest_port() -> None:
    pipeline = [{"podSelector": {"matchLabels": {"app": "pipeline"}}}]
    values = {
        "networkPolicy": {"enabled": True, "apiFrom": pipeline, "metricsFrom": pipeline},
        "ports": {"grpc": 6000, "metrics": 6001, "rest": 6002},
    }
    policy = render(values).one("NetworkPolicy")
    for port in (6000, 6001, 6002):
        assert admits(policy, port, NEIGHBOUR)
        assert not admits(policy, port, PROMETHEUS)
    assert not admits(policy, 50051, NEIGHBOUR)


def test_policy_selects_kserves_predictor_pods() -> None:
    values = {**ON, "kserve": {"enabled": True, "storageUri": "s3://models/mnist"}}
    release = render(values)
    selector = release.one("NetworkPolicy")["spec"]["podSelector"]
    name = release.one("InferenceService")["metadata"]["name"]
    # The labels KServe gives the pods of an InferenceService's predictor.
    assert selector == {
        "matchLabels": {"serving.kserve.io/inferenceservice": name, "component": "predictor"}
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"networkPolicy": {"enabled": True, "metricsFrom": [{}]}}, "/networkPolicy/metricsFrom/0"),
        (
            {"networkPolicy": {"enabled": True, "apiFrom": [{"pods": {}}]}},
            "/networkPolicy/apiFrom/0",
        ),
    ],
)
def test_schema_refuses_bad_peers(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(values)
