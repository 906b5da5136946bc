"""Shared helpers for the chart tests: paths, helm runner, YAML loading, object lookup."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sealtune"
VALUES = Path(__file__).resolve().parent / "values"
NAMESPACE = "sealtune-system"

Render = Callable[..., list[dict[str, Any]]]


class K8sYamlLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 floats ("1e-05"), as Kubernetes and Helm read them."""


K8sYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_all(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document manifest stream, dropping empty documents."""
    return [d for d in yaml.load_all(text, Loader=K8sYamlLoader) if d]


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with an isolated config/cache so no user repo config leaks in."""
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": "/tmp/sealtune-helm-test/config",
        "HELM_CACHE_HOME": "/tmp/sealtune-helm-test/cache",
        "HELM_DATA_HOME": "/tmp/sealtune-helm-test/data",
    }
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def values_file(name: str) -> Path:
    """A named values set from tests/chart/values/ ("default" means no file)."""
    return VALUES / f"{name}.yaml"


VALUE_SETS = ["default", "internal-registry", "namespace-scoped", "monitoring"]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """All rendered objects of one kind."""
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single rendered object of a kind."""
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
