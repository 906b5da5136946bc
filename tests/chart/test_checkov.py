"""checkov over the rendered chart and the operator-rendered workloads.

Every failure must be an exception documented in docs/scanner-exceptions.md, and every
documented exception must still be produced by some scan (no stale entries).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART, NAMESPACE, REPO, VALUE_SETS, load_all, run_helm, values_file

EXCEPTIONS_DOC = REPO / "docs" / "scanner-exceptions.md"
PINNED = {"internal-registry"}


def documented_exceptions() -> set[tuple[str, str, str]]:
    """(check id, scope, Kind/name) rows of the table in docs/scanner-exceptions.md."""
    rows = set()
    for line in EXCEPTIONS_DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(CKV\w+)\s*\|\s*([\w-]+)\s*\|\s*([\w./-]+)\s*\|\s*(.+?)\s*\|$", line)
        if m:
            assert len(m.group(4)) > 40, f"exception {m.group(1)} needs a real reason"
            rows.add((m.group(1), m.group(2), m.group(3)))
    return rows


def workload_manifests() -> list[dict[str, Any]]:
    """What the operator creates for the example FineTuneJob (pure render layer)."""
    from sealtune_api.finetunejob import FineTuneJobSpec
    from sealtune_operator.finetunejob import render as finetune
    from sealtune_operator.settings import OperatorSettings

    doc = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    doc["metadata"] = {
        "name": "clinical-notes-lora",
        "namespace": "ml",
        "uid": "u-1",
        "generation": 1,
    }
    settings = OperatorSettings(
        trainer_image="registry.internal.example:5000/sealtune/"
        "sealtune-trainer:0.1.0@sha256:" + "2" * 64
    )
    spec = FineTuneJobSpec.model_validate(doc["spec"])
    return finetune.children(doc, spec, settings, os.urandom(32))


@pytest.fixture(scope="module")
def scan(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[str, str]]]:
    """One checkov run over every target; failed (check, Kind/name) per target."""
    checkov = subprocess.run(
        [str(REPO / "hack" / "get-checkov.sh")], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    d = tmp_path_factory.mktemp("scan")
    for v in VALUE_SETS:
        args = ["template", "sealtune", str(CHART), "-n", NAMESPACE, "--include-crds"]
        if v != "default":
            args += ["-f", str(values_file(v))]
        (d / f"chart-{v}.yaml").write_text(run_helm(helm, *args).stdout)
    workloads = workload_manifests()
    assert {w["kind"] for w in workloads} >= {"NetworkPolicy", "Job", "Secret"}
    (d / "workloads.yaml").write_text(yaml.safe_dump_all(workloads))
    proc = subprocess.run(
        [
            checkov,
            "-d",
            str(d),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, set[tuple[str, str]]] = {p.stem: set() for p in d.glob("*.yaml")}
    passed = 0
    for r in reports:
        passed += r["summary"]["passed"]
        assert r["summary"]["parsing_errors"] == 0
        for f in r["results"]["failed_checks"]:
            target = Path(f["file_path"]).stem
            parts = f["resource"].split(".")  # Kind.namespace.name or Kind.name
            failed[target].add((f["check_id"], f"{parts[0]}/{parts[-1]}"))
    assert passed > 300, "checkov ran too few checks; did it see the manifests?"
    return failed


def allowed(target: str, rows: set[tuple[str, str, str]]) -> set[tuple[str, str]]:
    if target == "workloads":
        scopes = {"workloads"}
    else:
        scopes = (
            {"chart"} if target.removeprefix("chart-") in PINNED else {"chart", "chart-unpinned"}
        )
    return {(check, res) for check, scope, res in rows if scope in scopes}


@pytest.mark.parametrize("target", [f"chart-{v}" for v in VALUE_SETS] + ["workloads"])
def test_no_undocumented_failures(scan: dict[str, set[tuple[str, str]]], target: str) -> None:
    rows = documented_exceptions()
    extra = scan[target] - allowed(target, rows)
    assert not extra, f"checkov failures in {target} not in {EXCEPTIONS_DOC.name}: {extra}"


def test_workloads_pass_every_check(scan: dict[str, set[tuple[str, str]]]) -> None:
    assert scan["workloads"] == set()


def test_no_stale_exceptions(scan: dict[str, set[tuple[str, str]]]) -> None:
    rows = documented_exceptions()
    assert rows, "exceptions table not found"
    produced = set().union(*scan.values())
    for check, scope, res in rows:
        assert (check, res) in produced, f"{check} {res} ({scope}) no longer fails: remove it"
    # Pinning by digest really removes the digest/pull-policy findings.
    assert not {c for c, _ in scan["chart-internal-registry"]} & {"CKV_K8S_43", "CKV_K8S_15"}


def test_load_all_roundtrip() -> None:
    assert load_all("a: 1e-05\n---\n---\nb: 2\n") == [{"a": 1e-05}, {"b": 2}]
