"""gradsentry as a KServe predictor: the chart's ServingRuntime and InferenceService
(``kserve.enabled``) and the plain manifests in ``deploy/kserve/``.

Each custom resource is checked against KServe's own CRD schemas (attributed copies in
``tests/deploy/crds/``), strictly: no unknown field. Then the pod KServe would build is run
here: the runtime's ``kserve-container`` merged with the InferenceService's model container
(env by name, as KServe's strategic merge does, ``{{.Name}}`` filled in as KServe does), the
model files where KServe puts them (a temporary directory standing in for /mnt/models), and
``gradsentry serve`` started with that command, config file and environment until the
rendered readiness probe's health check says SERVING and a digit is classified.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.torchserve_harness import build_mar
from detectors.demo import ARTIFACTS
from service._proto.gradsentry.v1 import reliability_pb2_grpc as pb_grpc
from service.config import ServerConfig, load_config
from tests.deploy.custom_resources import validate
from tests.deploy.test_helm import (
    CHART,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    Release,
    render,
    values_of,
)
from tests.servers import ROOT, WAIT, server_env, tensor_request

MODELS = "/mnt/models"  # where KServe puts an InferenceService's storage
EXAMPLES = ROOT / "deploy" / "kserve"
KSERVE = {"kserve": {"enabled": True, "storageUri": "s3://models/mnist"}}
# The demo's state dict and bundle, as a user would upload them for an eager model.
EAGER = {"format": "eager", "path": "model.pt", "bundle": "bundle"}
KSERVE_KINDS = frozenset({"InferenceService", "ServingRuntime", "ClusterServingRuntime"})
# Config keys of the Open Inference Protocol transports, which the deploy manifests already
# set. Until the server knows them (the OIP data plane's branch), the pod runs without them;
# once it does, they are passed on and served like every other key.
PENDING_OIP_KEYS = frozenset({"rest_enabled", "rest_port", "model_name"})
SERVER_KEYS = frozenset(f.name for f in fields(ServerConfig))
_SERVING = re.compile(r"gradsentry serving \S+ on \S+:(\d+)")


def kserve_values(**extra: Any) -> dict[str, Any]:
    return {**KSERVE, "kserve": {**KSERVE["kserve"], **extra.pop("kserve", {})}, **extra}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


# --- KServe's schemas --------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        KSERVE,
        kserve_values(
            kserve={"model": EAGER, "inferenceServiceName": "mnist", "minReplicas": 0},
            ports={"grpc": 50051, "metrics": 9464, "rest": 8080},
            tls={"enabled": True, "secretName": "tls", "clientCAKey": "ca.crt"},
            auth={"enabled": True, "secretName": "token"},
            gpu={"enabled": True},
            nodeSelector={"pool": "gpu"},
        ),
    ],
    ids=["default", "rest-tls-auth-gpu"],
)
def test_chart_kserve_resources_pass_kserves_schemas(values: dict[str, Any]) -> None:
    release = render(values)
    runtime, service = release.one("ServingRuntime"), release.one("InferenceService")
    validate(runtime)
    validate(service)
    # Everything else is Kubernetes' own and passes its schemas strictly.
    for obj in release.objects:
        if obj["kind"] not in KSERVE_KINDS:
            for kube in KUBE_VERSIONS:
                kubernetes_validate.validate(obj, kube, strict=True)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_deploy_kserve_manifests_pass_kserves_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        validate(doc)


def test_the_schema_check_can_fail() -> None:
    service = render(KSERVE).one("InferenceService")
    service["spec"]["predictor"]["model"]["storageURI"] = "s3://x"  # misspelt: strict refuses
    with pytest.raises(jsonschema.ValidationError, match=r"\.spec\.predictor\.model\.storageURI"):
        validate(service)
    runtime = render(KSERVE).one("ServingRuntime")
    runtime["spec"]["supportedModelFormats"][0].pop("name")  # required by KServe
    with pytest.raises(jsonschema.ValidationError, match="'name' is a required property"):
        validate(runtime)


# --- What the chart renders ---------------------------------------------------------------


def test_kserve_owns_the_pods() -> None:
    release = render(KSERVE)
    assert release.kinds == [
        "ConfigMap",
        "ConfigMap",
        "InferenceService",
        "ServiceAccount",
        "ServingRuntime",
    ]
    assert "KServe predictor" in release.notes and "KServe" not in render(None).notes
    assert not {"ServingRuntime", "InferenceService"} & set(render(None).kinds)


def test_runtime_and_inference_service_fit_together() -> None:
    release = render(kserve_values(ports={"grpc": 50051, "metrics": 9464, "rest": 8080}))
    runtime, service = release.one("ServingRuntime"), release.one("InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == FULLNAME
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == (
        "RawDeployment"  # every port on KServe's Service; Knative routes one
    )
    (fmt,) = runtime["spec"]["supportedModelFormats"]
    assert model["modelFormat"] == {"name": fmt["name"], "version": fmt["version"]}
    assert model["storageUri"] == "s3://models/mnist"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}

    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the container KServe merges into
    # KServe's Service sends port 80 to the first port: REST, named as KServe expects.
    ports = [(p["name"], p["containerPort"]) for p in container["ports"]]
    assert ports == [("http1", 8080), ("h2c", 50051), ("metrics", 9464)]
    assert container["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "gradsentry.v1.Reliability",
    }
    volumes = {v["name"] for v in runtime["spec"]["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "9464"
    assert predictor["serviceAccountName"] == release.one("ServiceAccount")["metadata"]["name"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    # The config file: the chart's, with REST on; the model comes from the InferenceService.
    config = yaml.safe_load(release.config_text())
    assert predictor["terminationGracePeriodSeconds"] > pre_stop + config["grace_seconds"]
    assert (config["rest_enabled"], config["rest_port"], config["port"]) == (True, 8080, 50051)
    assert config["model_name"] == service["metadata"]["name"]  # OIP's model: the service
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env == {
        "GRADSENTRY_MODEL_FORMAT": "mar",
        "GRADSENTRY_MODEL_PATH": f"{MODELS}/model.mar",
        "GRADSENTRY_BUNDLE": f"{MODELS}/bundle",
    }


def test_ci_values_render_lint_and_pass_the_schemas() -> None:
    values = values_of("kserve")
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == [] and report["messages"] == [], report
    release = render(values)
    service = release.one("InferenceService")
    validate(service)
    validate(release.one("ServingRuntime"))
    assert service["metadata"]["name"] == yaml.safe_load(release.config_text())["model_name"]
    assert "POST /v2/models/mnist/infer" in release.notes
    assert release.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "mnist",
        "component": "predictor",
    }


def test_without_rest_grpc_takes_kserves_port_80() -> None:
    runtime = render(KSERVE).one("ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["h2c", "metrics"]
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    assert "rest_enabled" not in yaml.safe_load(render(KSERVE).config_text())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (kserve_values(autoscaling={"enabled": True}), "turn autoscaling.enabled off"),
        (kserve_values(keda={"enabled": True}), "turn keda.enabled off"),
        (kserve_values(serviceMonitor={"enabled": True}), "turn serviceMonitor.enabled off"),
        (
            kserve_values(
                mode="sidecar",
                modelServer={"image": {"repository": "ts", "tag": "1"}},
            ),
            "kserve.enabled needs mode standalone",
        ),
        (
            kserve_values(config={"model_path": "/x.mar"}),
            "config.model_path is set by kserve.model when kserve.enabled",
        ),
        (
            kserve_values(kserve={"minReplicas": 4, "maxReplicas": 2}),
            "kserve.minReplicas (4) must not exceed kserve.maxReplicas (2)",
        ),
        ({"ports": {"grpc": 50051, "metrics": 9464, "rest": 9464}}, "ports.rest (9464) must"),
    ],
)
def test_render_refuses_kserve_with_what_it_replaces(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kserve": {"enabled": True}}, "/kserve/storageUri"),
        (kserve_values(kserve={"storageUri": "models/mnist"}), "/kserve/storageUri"),
        (kserve_values(kserve={"model": {**EAGER, "path": "/abs"}}), "/kserve/model/path"),
        (kserve_values(kserve={"model": {**EAGER, "format": "pkl"}}), "/kserve/model/format"),
        ({"ports": {"grpc": 1, "metrics": 2, "rest": 0}}, "/ports/rest"),
    ],
)
def test_schema_refuses_bad_kserve_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


# --- The pod KServe builds, run here --------------------------------------------------------


def known_now(key: str) -> bool:
    """Whether the server knows config ``key``; a key it does not know yet must be one of the
    OIP transports' (PENDING_OIP_KEYS), which the pod then runs without."""
    if key in SERVER_KEYS:
        return True
    assert key in PENDING_OIP_KEYS, f"{key}: not a key of the server's config"
    return False


def write(directory: Path, release: Release) -> Path:
    """The chart's config file as the pod mounts it (less keys the server does not know yet)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(release.config_text())
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if known_now(k)}))
    return path


def kserve_container(runtime: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """The predictor container as KServe builds it: the runtime's kserve-container with the
    InferenceService's model container merged over it (env by name), placeholders filled."""
    (container,) = (c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container")
    model = service["spec"]["predictor"]["model"]
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    env.update({e["name"]: e["value"] for e in model.get("env", [])})
    meta = service["metadata"]
    env = {
        k: v.replace("{{.Name}}", meta["name"]).replace("{{.Namespace}}", NAMESPACE)
        for k, v in env.items()
    }
    return {**container, "env": env}


def local_environment(env: dict[str, str], models: Path) -> dict[str, str]:
    """The container's GRADSENTRY_* variables for a run on 127.0.0.1 with free ports, the
    model directory in place of /mnt/models. Keys the server does not know yet must be
    the OIP transports' (PENDING_OIP_KEYS); they are left out."""
    local = {}
    for name, value in env.items():
        if not name.startswith("GRADSENTRY_"):
            continue
        if not known_now(name.removeprefix("GRADSENTRY_").lower()):
            continue
        local[name] = value.replace(MODELS, str(models))
    local.update({"GRADSENTRY_HOST": "127.0.0.1", "GRADSENTRY_PORT": "0"})
    local.update({"GRADSENTRY_METRICS_PORT": "0", "GRADSENTRY_DEVICE": "cpu"})
    if "rest_port" in SERVER_KEYS:
        local["GRADSENTRY_REST_PORT"] = "0"
    return local


@contextmanager
def run_pod(
    container: dict[str, Any], config: Path | None, models: Path, tmp: Path
) -> Iterator[str]:
    """``container``'s command run here with its environment; yields its gRPC target once
    the process says it serves."""
    command = container["command"]
    assert command[:2] == ["gradsentry", "serve"]
    args = ["serve"] if config is None else ["serve", "--config", str(config)]
    assert len(command) == 1 + len(args) and (config is None or command[2] == "--config")
    env = local_environment(container["env"], models)
    load_config(config, environ=env)  # every variable a known, well-typed key
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            cwd=ROOT,
            env={**server_env(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT
        while not (served := _SERVING.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        yield f"127.0.0.1:{served.group(1)}"
    finally:
        proc.kill()
        proc.wait(WAIT)


def oip_model_ready(channel: grpc.Channel, name: str) -> bool:
    """OIP ``ModelReady`` for model ``name``, the request encoded by hand (field 1, the name;
    ``kserve_grpc_predict_v2.proto``), so that no OIP stubs are needed here."""
    encoded = name.encode()
    assert len(encoded) < 128  # one-byte length
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
    reply = call(b"\x0a" + bytes([len(encoded)]) + encoded, timeout=WAIT)
    return reply == b"\x08\x01"  # field 1 (ready) = true


def probe_and_classify(target: str, container: dict[str, Any], model: str) -> None:
    """The readiness probe's health check answers SERVING, and a demo digit is classified
    as it is labelled. Where the server speaks the OIP (it knows the OIP keys), the model is
    ready under the InferenceService's name; before, the OIP service does not exist."""
    service = container["readinessProbe"]["grpc"].get("service", "")
    images = np.load(ARTIFACTS / "samples.npz")
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        x = images["images"][0].astype(np.float32) / 255.0
        answer = pb_grpc.ReliabilityStub(channel).Check(tensor_request(x), timeout=WAIT)
        assert answer.predicted_class == int(images["labels"][0])
        if PENDING_OIP_KEYS <= SERVER_KEYS:
            assert oip_model_ready(channel, model)
        else:
            with pytest.raises(grpc.RpcError) as caught:
                oip_model_ready(channel, model)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_chart_kserve_pod_serves_the_model_from_mnt_models(tmp_path: Path) -> None:
    models = tmp_path / "mnt-models"
    models.mkdir()
    shutil.copy(ARTIFACTS / "model.pt", models / "model.pt")
    shutil.copytree(ARTIFACTS / "bundle", models / "bundle")
    release = render(kserve_values(kserve={"model": EAGER}))
    container = kserve_container(release.one("ServingRuntime"), release.one("InferenceService"))
    assert container["env"]["GRADSENTRY_MODEL_WEIGHTS"] == f"{MODELS}/model.pt"
    (mount,) = (m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["command"][-1] == mount["mountPath"]
    config = write(tmp_path / "etc", release)
    with run_pod(container, config, models, tmp_path) as target:
        probe_and_classify(target, container, release.one("InferenceService")["metadata"]["name"])


def test_deploy_kserve_example_serves_a_mar_from_mnt_models(tmp_path: Path) -> None:
    """servingruntime.yaml's ClusterServingRuntime with inferenceservice.yaml: the .mar and
    its bundle from the storage URI; configured by environment variables alone."""
    models = tmp_path / "mnt-models"
    build_mar(models, name="model")
    shutil.copytree(ARTIFACTS / "bundle", models / "bundle")
    (runtime,) = documents(EXAMPLES / "servingruntime.yaml")
    (service,) = documents(EXAMPLES / "inferenceservice.yaml")
    assert service["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    container = kserve_container(runtime, service)
    assert container["env"]["GRADSENTRY_MODEL_NAME"] == service["metadata"]["name"]
    with run_pod(container, None, models, tmp_path) as target:
        probe_and_classify(target, container, service["metadata"]["name"])


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_deploy_kserve_services_use_the_runtime_and_known_keys(path: Path) -> None:
    (runtime,) = documents(EXAMPLES / "servingruntime.yaml")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    for doc in documents(path):
        if doc["kind"] != "InferenceService":
            continue
        model = doc["spec"]["predictor"]["model"]
        if model["runtime"] != runtime["metadata"]["name"]:
            continue  # another runtime's (Triton beside gradsentry)
        assert model["modelFormat"]["name"] in formats
        assert model["storageUri"].split("://")[0] in {"s3", "pvc", "gs", "https"}
        env = kserve_container(runtime, doc)["env"]
        local_environment(env, Path("/models"))  # every GRADSENTRY_* a key the server knows
        assert env["GRADSENTRY_BUNDLE"].startswith(f"{MODELS}/")
        path_key = "GRADSENTRY_MODEL_PATH"
        assert env[path_key].startswith(f"{MODELS}/"), path_key


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
def test_kserve_pods_are_probed_as_the_charts_own(tls: bool) -> None:
    """The same probes as the Deployment's (tested against real servers in test_helm):
    native gRPC health checks, or ``gradsentry health`` over TLS with TLS on."""
    values: dict[str, Any] = {"tls": {"enabled": tls, "secretName": "tls"}}
    deployment = render(values).container()
    (container,) = render(kserve_values(**values)).one("ServingRuntime")["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe] == deployment[probe]
        assert ("exec" in container[probe]) == tls and ("grpc" in container[probe]) != tls
