"""The Helm chart through Helm's own Go engine (helm-python-sdk) and Kubernetes' schemas.

Every values file is rendered by Helm, linted with ``strict=True`` and each manifest is
checked with ``kubernetes-validate --strict`` for Kubernetes 1.28 and 1.33; the content
checks read the rendered objects, and the config file the chart writes is loaded by the
server's own ``load_config``. Bad values must be refused by ``values.schema.json`` or by
the chart's ``fail`` checks, with a message that names the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from service._proto.gradsentry.v1 import reliability_pb2
from service.cli import parse_args
from service.config import ServerConfig, load_config
from service.metrics import Metrics
from tests.servers import serve_process, server_env

CHART = Path(__file__).resolve().parents[2] / "helm" / "gradsentry"
RELEASE = "demo"
NAMESPACE = "ml"
FULLNAME = "demo-gradsentry"
KUBE_VERSIONS = ("1.28.0", "1.33.0")
# Prometheus Operator CRDs: kubernetes-validate ships only Kubernetes' own schemas.
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
# None renders the chart's defaults; the others are files under ci/.
VALUES_FILES = (None, "sidecar-torchserve", "gpu", "secure")
RELIABILITY = reliability_pb2.DESCRIPTOR.services_by_name["Reliability"].full_name
GPU = "nvidia.com/gpu"


def values_of(name: str | None) -> dict[str, Any] | None:
    """The values in ``ci/<name>-values.yaml``, parsed by Helm's own YAML reader."""
    if name is None:
        return None
    return helm.values_from_yaml((CHART / "ci" / f"{name}-values.yaml").read_text())


@dataclass(frozen=True)
class Release:
    """One rendering of the chart: the manifests (parsed) and NOTES.txt."""

    objects: tuple[dict[str, Any], ...]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        if len(found) != 1:
            raise LookupError(f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    @property
    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    @property
    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def container(self, name: str = "gradsentry") -> dict[str, Any]:
        (found,) = (c for c in self.pod["containers"] if c["name"] == name)
        return found

    def config_text(self) -> str:
        return self.one("ConfigMap", FULLNAME)["data"]["config.yaml"]


def render(values: dict[str, Any] | None) -> Release:
    """Render the chart with Helm's engine (install-time values validation included)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Release(tuple(objects), notes)


@pytest.fixture(scope="module")
def releases() -> dict[str | None, Release]:
    return {name: render(values_of(name)) for name in VALUES_FILES}


def server_config(release: Release, tmp_path: Path) -> ServerConfig:
    """The chart's config file as the server reads it (no GRADSENTRY_* overrides)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(release.config_text())
    return load_config(path, environ={})


# --- Helm's engine: lint and the chart's own files --------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUES_FILES)
def test_lint_strict_reports_nothing(name: str | None, kube: str) -> None:
    report = helm.lint(CHART, values_of(name), strict=True, kube_version=f"v{kube}")
    assert report["total_charts_linted"] == 1
    assert report["messages"] == [], report
    assert report["errors"] == [], report


def test_chart_metadata_and_schema_load() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.name == "gradsentry"
        assert chart.metadata["kubeVersion"] == ">=1.28.0-0"
        schema = chart.schema
        assert schema is not None and schema["additionalProperties"] is False
        chart.validate_schema(None)
        for name in VALUES_FILES[1:]:
            chart.validate_schema(values_of(name))


# --- Kubernetes' schemas -----------------------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_manifest_passes_kubernetes_validate_strict(
    releases: dict[str | None, Release], name: str | None, kube: str
) -> None:
    release = releases[name]
    checked = 0
    for obj in release.objects:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert obj["kind"] in CRD_KINDS, f"{label}: no Kubernetes {kube} schema"
            continue
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{label} is invalid for Kubernetes {kube}: {path}: {exc.message}")
        assert version == kube.rsplit(".", 1)[0]  # its schemas, not a nearby version's
        checked += 1
    assert checked >= 5


def test_strict_validation_catches_a_misspelt_field(releases: dict[str | None, Release]) -> None:
    deployment = json.loads(json.dumps(releases[None].one("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# --- What the manifests say ---------------------------------------------------------------


def test_default_release_objects(releases: dict[str | None, Release]) -> None:
    release = releases[None]
    assert release.kinds == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert release.one("Deployment")["spec"]["replicas"] == 2
    assert [c["name"] for c in release.pod["containers"]] == ["gradsentry"]
    assert release.pod["automountServiceAccountToken"] is False
    assert release.pod["serviceAccountName"] == release.one("ServiceAccount")["metadata"]["name"]
    for obj in release.objects:
        assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", VALUES_FILES)
def test_command_and_config_file_are_the_servers(
    releases: dict[str | None, Release], name: str | None, tmp_path: Path
) -> None:
    release = releases[name]
    container = release.container()
    assert container["command"][:2] == ["gradsentry", "serve"]
    args = parse_args(container["command"][1:])
    (mount,) = (m for m in container["volumeMounts"] if m["name"] == "config")
    assert args.config == mount["mountPath"] == "/etc/gradsentry/config.yaml"
    assert mount["readOnly"] is True
    (volume,) = (v for v in release.pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == FULLNAME

    config = server_config(release, tmp_path)  # every key known and well typed
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (config.host, config.port, config.metrics_port) == (
        "0.0.0.0",
        ports["grpc"],
        ports["metrics"],
    )
    annotations = release.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        template = render(values).one("Deployment")["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    assert checksum(None) == checksum({"replicaCount": 5})
    assert checksum(None) != checksum({"config": {"max_batch_size": 8}})


@pytest.mark.parametrize("name", [n for n in VALUES_FILES if n != "secure"])
def test_probes_are_native_grpc_health_checks(
    releases: dict[str | None, Release], name: str | None
) -> None:
    container = releases[name].container()
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(container[probe]) >= {"grpc", "periodSeconds", "failureThreshold"}
        assert container[probe]["grpc"]["port"] == port
        assert "httpGet" not in container[probe] and "tcpSocket" not in container[probe]
    # Readiness asks about the Reliability service itself; liveness about the server.
    assert container["readinessProbe"]["grpc"]["service"] == RELIABILITY
    assert container["livenessProbe"]["grpc"].get("service", "") == ""


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _mtls_secret(cwd: Path, server_name: str) -> None:
    """What a cert-manager Secret holds: ca.crt, and tls.crt / tls.key signed by it for
    ``server_name`` (the chart's mutual TLS trusts the same CA for clients)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(cwd, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl(cwd, "req", "-new", *ec, "-keyout", "tls.key", "-out", "tls.csr",
             "-subj", f"/CN={server_name}")  # fmt: skip
    (cwd / "tls.ext").write_text(
        f"subjectAltName=DNS:{server_name}\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(cwd, "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", "1", "-days", "2", "-extfile", "tls.ext",
             "-out", "tls.crt")  # fmt: skip


def test_tls_probes_run_gradsentry_health_and_pass_against_a_tls_server(
    releases: dict[str | None, Release], tmp_path: Path
) -> None:
    """The kubelet's gRPC probes speak plaintext only; with TLS the chart's probes run
    ``gradsentry health`` over (mutual) TLS. The rendered commands are run, as rendered,
    against a real TLS server with a certificate of the kind the chart expects."""
    container = releases["secure"].container()
    commands = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe] and "tcpSocket" not in container[probe]
        commands[probe] = container[probe]["exec"]["command"]
        assert commands[probe][:2] == ["gradsentry", "health"]
    assert commands["readinessProbe"][-4:-2] == ["--service", RELIABILITY]
    server_name = f"{FULLNAME}.{NAMESPACE}.svc"
    assert server_name in commands["livenessProbe"]

    _mtls_secret(tmp_path, server_name)
    tls_dir = "/etc/gradsentry/tls"
    config = {
        "model_worker": "inline",
        "tls_cert_file": str(tmp_path / "tls.crt"),
        "tls_key_file": str(tmp_path / "tls.key"),
        "tls_client_ca_file": str(tmp_path / "ca.crt"),
    }
    with serve_process(tmp_path, **config) as server:
        for probe, command in commands.items():
            args = [a.replace(tls_dir, str(tmp_path)) for a in command[2:]]
            args[args.index("--target") + 1] = server.target  # the container's port: ours
            done = subprocess.run(
                [sys.executable, "-m", "service.health", *args],
                env=server_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0 and done.stdout.strip() == "SERVING", (probe, done)


def test_the_metrics_bind_address_is_a_chart_value(tmp_path: Path) -> None:
    default = server_config(render(None), tmp_path)
    assert default.metrics_host == "0.0.0.0"  # Prometheus in other pods scrapes it
    inside = server_config(render({"metricsHost": "127.0.0.1"}), tmp_path)
    assert (inside.host, inside.metrics_host) == ("0.0.0.0", "127.0.0.1")
    with pytest.raises(Exception, match="metrics_host is set by the chart"):
        render({"config": {"metrics_host": "0.0.0.0"}})


@pytest.mark.parametrize("name", VALUES_FILES)
def test_pods_are_locked_down(releases: dict[str | None, Release], name: str | None) -> None:
    release = releases[name]
    pod = release.pod
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
        (tmp,) = (m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]], container["name"]


@pytest.mark.parametrize("name", VALUES_FILES)
def test_kubelet_waits_longer_than_the_drain(
    releases: dict[str | None, Release], name: str | None, tmp_path: Path
) -> None:
    release = releases[name]
    config = server_config(release, tmp_path)
    pre_stop = release.container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert release.pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + config.grace_seconds


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"config": {"grace_seconds": 0}}, 5 + 0 + 5),
        ({"config": {"grace_seconds": 10.5}}, 5 + 11 + 5),
        ({"config": {"grace_seconds": 30}, "drainMarginSeconds": 1}, 5 + 30 + 1),
        ({"lifecycle": {"preStopSleepSeconds": 0}}, 0 + 10 + 5),
        ({"terminationGracePeriodSeconds": 16}, 16),
    ],
)
def test_termination_grace_period_is_derived_or_checked(
    values: dict[str, Any], expected: int
) -> None:
    release = render(values)
    assert release.pod["terminationGracePeriodSeconds"] == expected
    if values.get("lifecycle", {}).get("preStopSleepSeconds") == 0:
        assert "lifecycle" not in release.container()


def test_gpu_limit_only_with_gpu_values(
    releases: dict[str | None, Release], tmp_path: Path
) -> None:
    for name, release in releases.items():
        for container in release.pod["containers"]:
            resources = container.get("resources", {})
            requested = {**resources.get("requests", {}), **resources.get("limits", {})}
            assert (GPU in requested) == (name == "gpu" and container["name"] == "gradsentry")
    gpu = releases["gpu"]
    assert gpu.container()["resources"]["limits"][GPU] == 1
    assert gpu.container()["resources"]["limits"]["memory"] == "8Gi"  # merged, not replaced
    assert gpu.container()["image"].endswith(":0.1.0-cuda")
    assert server_config(gpu, tmp_path).device == "cuda"
    assert gpu.pod["runtimeClassName"] == "nvidia"
    assert any(t["key"] == GPU for t in gpu.pod["tolerations"])


def test_gpu_switch_alone_selects_cuda(tmp_path: Path) -> None:
    release = render({"gpu": {"enabled": True, "count": 2}, "config": {"device": None}})
    assert release.container()["resources"]["limits"][GPU] == 2
    assert server_config(release, tmp_path).device == "cuda"


def test_gpu_switch_alone_fits_a_cuda_worker() -> None:
    """gpu.enabled alone raises the host memory past the CPU default (a CUDA torch loads
    several GB of CUDA libraries) and gives CUDA's JIT cache a writable volume."""
    release = render({"gpu": {"enabled": True}})
    resources = release.container()["resources"]
    assert resources["limits"]["memory"] == "8Gi" and resources["requests"]["memory"] == "4Gi"
    assert resources["requests"]["cpu"] == "500m"  # the rest of resources is kept
    env = {e["name"]: e.get("value") for e in release.container()["env"]}
    assert env["CUDA_CACHE_PATH"] == "/var/cache/cuda"
    mounts = {m["name"]: m["mountPath"] for m in release.container()["volumeMounts"]}
    assert mounts["cuda-cache"] == "/var/cache/cuda"
    volumes = {v["name"]: v for v in release.pod["volumes"]}
    assert volumes["cuda-cache"]["emptyDir"] == {"sizeLimit": "1Gi"}
    # null keeps resources.*; without a GPU there is no cache volume and no variable.
    kept = render({"gpu": {"enabled": True, "memory": {"limit": None, "request": None}}})
    assert kept.container()["resources"]["limits"]["memory"] == "2Gi"
    plain = render(None)
    assert "CUDA_CACHE_PATH" not in {e["name"] for e in plain.container()["env"]}
    assert "cuda-cache" not in {v["name"] for v in plain.pod["volumes"]}


def test_sidecar_pod_shares_the_model_volume_with_torchserve(
    releases: dict[str | None, Release], tmp_path: Path
) -> None:
    release = releases["sidecar-torchserve"]
    assert [c["name"] for c in release.pod["containers"]] == ["gradsentry", "torchserve"]
    volumes = {v["name"]: v for v in release.pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "mnist-models"
    mounts = {
        c["name"]: next(m for m in c["volumeMounts"] if m["name"] == "models")
        for c in release.pod["containers"]
    }
    assert mounts["gradsentry"]["mountPath"] == mounts["torchserve"]["mountPath"] == "/models"
    assert mounts["gradsentry"]["readOnly"] is True
    config = server_config(release, tmp_path)
    assert (config.model_format, config.model_path) == ("mar", "/models/mnist.mar")
    assert config.bundle.startswith("/models/")
    torchserve = release.container("torchserve")
    assert torchserve["image"] == "pytorch/torchserve:0.12.0-cpu"
    assert {"--model-store", "/models"} <= set(torchserve["args"])
    assert torchserve["readinessProbe"]["httpGet"]["port"] == "ts-management"
    # One Service in front of both containers.
    service_ports = {p["name"] for p in release.one("Service")["spec"]["ports"]}
    assert service_ports == {
        "grpc",
        "metrics",
        "ts-inference",
        "ts-management",
        "ts-metrics",
        "ts-grpc",
    }
    # A standalone pod has no model volume unless asked for one.
    assert "models" not in {v["name"] for v in releases[None].pod["volumes"]}


@pytest.mark.parametrize("name", VALUES_FILES)
def test_service_reaches_the_pods(releases: dict[str | None, Release], name: str | None) -> None:
    release = releases[name]
    service = release.one("Service")
    template = release.one("Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert template["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    deployment_selector = release.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert deployment_selector == service["spec"]["selector"]
    container_ports = {
        p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]
    }
    for port in service["spec"]["ports"]:
        assert container_ports[port["targetPort"]] == port["port"]
    if release.all("PodDisruptionBudget"):
        pdb = release.one("PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_dashboard_configmap_for_the_grafana_sidecar(
    releases: dict[str | None, Release],
) -> None:
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    for name, release in releases.items():
        cm = release.one("ConfigMap", f"{FULLNAME}-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        dashboard = json.loads(cm["data"]["gradsentry.json"])
        assert dashboard == shipped
        expected_ns = "monitoring" if name == "secure" else NAMESPACE
        assert cm["metadata"]["namespace"] == expected_ns
    exprs = [t["expr"] for p in shipped["panels"] for t in p.get("targets", [])]  # rows: none
    assert exprs and all('job="$job"' in e for e in exprs)  # the dashboard's job variable
    off = render({"dashboard": {"enabled": False}})
    assert [cm["metadata"]["name"] for cm in off.all("ConfigMap")] == [FULLNAME]


def test_autoscaling_on_queue_depth_or_cpu(releases: dict[str | None, Release]) -> None:
    exported = generate_latest(Metrics(CollectorRegistry()).registry).decode()
    for name in (None, "sidecar-torchserve"):
        assert releases[name].all("HorizontalPodAutoscaler") == []
    gpu = releases["gpu"]
    hpa = gpu.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "32"}
    assert f"\n{metric['pods']['metric']['name']} " in exported  # a gauge the server exports
    assert "replicas" not in gpu.one("Deployment")["spec"]  # the HPA owns the count
    (cpu,) = releases["secure"].one("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert releases["secure"].one("PodDisruptionBudget")["spec"] == {
        "minAvailable": "50%",
        "selector": {"matchLabels": releases["secure"].one("Service")["spec"]["selector"]},
    }


def test_servicemonitor_and_prometheusrule(releases: dict[str | None, Release]) -> None:
    assert releases[None].all("ServiceMonitor") == releases[None].all("PrometheusRule") == []
    release = releases["sidecar-torchserve"]
    service = release.one("Service")
    monitor = release.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The rules of files/prometheus-rules.yaml: the operator names the job after the Service.
    rule = release.one("PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    alert = alerts["GradsentryNotServing"]
    job = service["metadata"]["name"]
    assert alert["expr"] == f'up{{job="{job}", namespace="{NAMESPACE}"}} == 0'
    assert "{{ $labels.instance }}" in alert["annotations"]["description"]
    # Groups given in values replace it.
    custom = releases["secure"].one("PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in custom] == ["gradsentry.custom"]


def test_tls_and_token_secrets_are_wired_to_the_config(
    releases: dict[str | None, Release], tmp_path: Path
) -> None:
    release = releases["secure"]
    config = server_config(release, tmp_path)
    assert config.tls_cert_file == "/etc/gradsentry/tls/tls.crt"
    assert config.tls_key_file == "/etc/gradsentry/tls/tls.key"
    assert config.tls_client_ca_file == "/etc/gradsentry/tls/ca.crt"
    assert config.auth_token_file == "/etc/gradsentry/auth/token"
    volumes = {v["name"]: v for v in release.pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "gradsentry-tls"
    assert volumes["auth"]["secret"]["secretName"] == "gradsentry-token"
    mounts = {m["name"]: m for m in release.container()["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/gradsentry/tls", "readOnly": True}
    assert mounts["auth"]["mountPath"] == "/etc/gradsentry/auth" and mounts["auth"]["readOnly"]
    plain = server_config(releases[None], tmp_path / "plain")
    assert (plain.tls_cert_file, plain.auth_token_file) == ("", "")
    assert {"tls", "auth"}.isdisjoint(v["name"] for v in releases[None].pod["volumes"])


def test_notes_say_how_to_call_the_service(releases: dict[str | None, Release]) -> None:
    notes = releases[None].notes
    assert f"{FULLNAME}.{NAMESPACE}.svc.cluster.local:50051" in notes
    assert f"port-forward service/{FULLNAME} 50051:50051 9464:9464" in notes
    assert "grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check" in notes
    assert f"{RELIABILITY}/GetInfo" in notes
    assert "gradsentry check --target localhost:50051 --demo" in notes
    secure = releases["secure"].notes
    assert "-plaintext" not in secure
    assert "--tls-ca ca.crt --cert client.crt --key client.key --token-file token" in secure
    assert "ts-inference" in releases["sidecar-torchserve"].notes


# --- Bad values are refused with a message naming the key --------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": -1}, "/replicaCount': minimum"),
        ({"replicaCount": "two"}, "/replicaCount': got string, want integer"),
        ({"mode": "daemonset"}, "/mode': value must be one of"),
        ({"image": {"repository": None}}, "/image': missing property 'repository'"),
        ({"image": {"repository": ""}}, "/image/repository': minLength"),
        ({"ports": {"grpc": 70000}}, "/ports/grpc': maximum"),
        ({"config": {"grace_seconds": -1}}, "/config/grace_seconds': minimum"),
        ({"config": {"max_batch_size": 1.5}}, "/config/max_batch_size': got number"),
        ({"config": {"device": "tpu"}}, "/config/device': 'tpu' does not match"),
        ({"config": {"model_worker": "thread"}}, "/config/model_worker': value must be one of"),
        ({"config": {"torch_threads": -1}}, "/config/torch_threads': minimum"),
        ({"config": {"server_nice": 20}}, "/config/server_nice': maximum"),
        ({"autoscaling": {"metric": "memory"}}, "/autoscaling/metric': value must be one of"),
        ({"gpu": {"count": 0}}, "/gpu/count': minimum"),
        ({"gpu": {"enabled": "yes"}}, "/gpu/enabled': got string, want boolean"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"mode": "sidecar"}, "/modelServer/image/repository': minLength"),
        ({"tls": {"enabled": True}}, "/tls/secretName': minLength"),
        ({"auth": {"enabled": True}}, "/auth/secretName': minLength"),
        (
            {"podDisruptionBudget": {"maxUnavailable": "half"}},
            "/podDisruptionBudget/maxUnavailable",
        ),
        ({"terminationGracePeriodSeconds": 0}, "/terminationGracePeriodSeconds': minimum"),
        ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval'"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as caught:
            chart.validate_schema(values)
        assert message in str(caught.value)
        # Rendering (what install does) refuses them too, before any template runs.
        with pytest.raises(helm.HelmValuesError, match="values don't meet") as caught:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"terminationGracePeriodSeconds": 15},
            "terminationGracePeriodSeconds (15) must be longer than "
            "lifecycle.preStopSleepSeconds + config.grace_seconds (5 + 10 = 15 s)",
        ),
        ({"config": {"port": 6000}}, "config.port is set by the chart: use ports.grpc instead"),
        ({"config": {"tls_cert_file": "/x"}}, "config.tls_cert_file is set by the chart"),
        ({"ports": {"metrics": 50051}}, "ports.grpc and ports.metrics must differ"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)",
        ),
        (
            {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": None}}},
            "autoscaling.metric cpu needs resources.requests.cpu",
        ),
        (
            {"podDisruptionBudget": {"minAvailable": 1}},
            "set minAvailable or maxUnavailable, not both",
        ),
        (
            {
                "mode": "sidecar",
                "modelServer": {
                    "image": {"repository": "server", "tag": "1"},
                    "ports": [{"name": "http", "containerPort": 9464}],
                },
            },
            "modelServer.ports: port 9464 is gradsentry's",
        ),
        (
            {
                "mode": "sidecar",
                "ports": {"grpc": 50051, "metrics": 9464, "rest": 8080},
                "modelServer": {
                    "image": {"repository": "server", "tag": "1"},
                    "ports": [{"name": "http", "containerPort": 8080}],
                },
            },
            "modelServer.ports: port 8080 is gradsentry's",
        ),
    ],
)
def test_render_refuses_inconsistent_values(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)  # each value alone is well formed
        with pytest.raises(helm.HelmRenderError) as caught:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)
