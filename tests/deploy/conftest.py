"""The rendered overlays of deploy/k8s and the schemas to check them with, for
test_manifests.py: `kubectl kustomize` (the kubectl next to this Python) renders; Kubernetes'
own schemas (kubernetes-validate) and the CRDs vendored in deploy/crds validate."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "production")
KUBERNETES = "1.31"  # the oldest Kubernetes docs/deploy.md supports
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: the CRDs are large
Obj = dict[str, Any]


def _kubectl() -> Path:
    kubectl = Path(sys.executable).with_name("kubectl")
    if not kubectl.exists():
        pytest.fail(f"{kubectl} is missing: install the dev extras (pip install -e '.[dev]')")
    return kubectl


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    """`kubectl kustomize` of one overlay, as objects."""
    where = ROOT / "deploy" / "k8s" / "overlays" / overlay
    done = subprocess.run(
        [_kubectl(), "kustomize", str(where)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {where} failed:\n{done.stderr}"
    return tuple(obj for obj in yaml.load_all(done.stdout, Loader=LOADER) if obj)


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    return render(request.param)


@pytest.fixture
def rendered() -> Callable[[str], tuple[Obj, ...]]:
    """Renders an overlay by name."""
    return render


def _strict(schema: Obj) -> Obj:
    """A CRD schema that refuses unknown fields, as `kubectl apply` (field validation Strict)
    does, instead of pruning them silently."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict(schema[key])
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> the strict openAPIV3Schema of every CRD vendored in deploy/crds."""
    found = {}
    for path in sorted((ROOT / "deploy" / "crds").rglob("*.yaml")):
        spec = yaml.load(path.read_text(), Loader=LOADER)["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            found[key] = _strict(version["schema"]["openAPIV3Schema"])
    return found


def _schema_problems(obj: Obj) -> list[str]:
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        errors = jsonschema.Draft202012Validator(schema).iter_errors(obj)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema: not in Kubernetes {KUBERNETES}, and no CRD of it in deploy/crds"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.absolute_path))}: {exc.message}"]
    return []


@pytest.fixture
def schema_problems() -> Callable[[Obj], list[str]]:
    """What is wrong with an object by its schema: Kubernetes' for a built-in kind, the
    vendored CRD's for a custom resource; a kind with neither has "no schema"."""
    return _schema_problems
