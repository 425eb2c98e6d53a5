"""Custom resources checked against their upstream CRDs (attributed copies in ``crds/``).

``validate(obj)`` finds the CRD of ``obj``'s kind, takes the ``openAPIV3Schema`` of the
version in ``obj``'s apiVersion and checks the whole object with ``jsonschema``, then refuses
fields the schema does not declare, as the API server's strict field validation
(``kubectl apply --validate=strict``) does: a structural schema allows no unknown field
except under ``x-kubernetes-preserve-unknown-fields``. JSON Schema alone would let a
misspelt field through, and the API server would then prune it silently.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"
# kind -> the CRD file (``.gz``: the upstream file gzip-compressed, byte for byte).
CRD_FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml.gz",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml.gz",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml.gz",
    "ScaledObject": "keda.sh_scaledobjects.yaml",
}


@cache
def _crd(name: str) -> dict[str, Any]:
    path = CRDS / name
    data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    return yaml.load(data, Loader=yaml.CSafeLoader)  # 2 MB: the C loader


def crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    """The openAPIV3Schema the CRD of ``kind`` serves for ``api_version`` (group/version)."""
    crd = _crd(CRD_FILES[kind])
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = (v for v in crd["spec"]["versions"] if v["name"] == version and v["served"])
    return served["schema"]["openAPIV3Schema"]


def unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of the fields in ``obj`` that ``schema`` (structural) does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
            else:
                found.append(f"{path}.{key}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            found += unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def validate(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` passes its CRD's schema strictly.
    ``metadata`` is the API server's own ObjectMeta (the CRD declares only its type)."""
    schema = crd_schema(obj["kind"], obj["apiVersion"])
    # jsonschema.validate would first check the 2 MB schema against the meta-schema, each call.
    jsonschema.Draft202012Validator(schema).validate(obj)
    unknown = [p for p in unknown_fields(obj, schema) if not p.startswith(".metadata.")]
    if unknown:
        raise jsonschema.ValidationError(f"{obj['kind']}: unknown fields {unknown}")
