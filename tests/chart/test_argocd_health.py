"""Argo CD health checks, run by real Lua interpreters on sample status objects.

Argo CD embeds gopher-lua (Lua 5.1); the checks run here under Debian's lua5.1 and
lua5.4 (installed by hack/get-lua.sh), with `obj` built from the sample object the
same way Argo CD does: a global table, arrays 1-indexed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import REPO

ARGOCD = REPO / "deploy" / "argocd"
FTJ = ARGOCD / "health-finetunejob.lua"
MS = ARGOCD / "health-modelserve.lua"


@pytest.fixture(scope="session")
def luas() -> list[str]:
    """Paths of lua5.1 and lua5.4, installed idempotently if missing."""
    out = subprocess.run(
        [str(REPO / "hack" / "get-lua.sh")], check=True, capture_output=True, text=True
    )
    paths = out.stdout.split()
    assert len(paths) == 2, out
    return paths


def lua_literal(value: Any) -> str:
    """A Lua table constructor for a JSON-like value."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes here
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def health(lua: str, script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    """Run a health check as Argo CD does: `obj` global, script body returns hs."""
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = (function()\n{script.read_text()}\nend)()\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    proc = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    status, message = proc.stdout.split("\n")[:2]
    return status, message


def cond(
    ctype: str, status: str = "True", reason: str = "", message: str = "", generation: int = 1
) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason or ctype,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def obj(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    o: dict[str, Any] = {
        "apiVersion": "sealtune.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if status is not None:
        o["status"] = status
    return o


# (case id, object, expected status, substring of the message)
FTJ_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-status", obj("FineTuneJob", None), "Progressing", "Waiting for the Sealtune operator"),
    (
        "pending",
        obj(
            "FineTuneJob",
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [
                    cond("NetworkIsolated"),
                    cond("ResourcesReady", "False", "WaitingForPVC", "Waiting for checkpoint PVC"),
                ],
            },
        ),
        "Progressing",
        "Waiting for checkpoint PVC",
    ),
    (
        "running-progress",
        obj(
            "FineTuneJob",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("Running")],
                "progress": {"step": 120, "total": 400, "epoch": 1.0, "loss": 2.5},
            },
        ),
        "Progressing",
        "step 120/400",
    ),
    (
        "running-float-numbers",
        obj(
            "FineTuneJob",
            {
                "phase": "Running",
                "observedGeneration": 1.0,
                "progress": {"step": 12.0, "total": 40.0},
            },
            generation=1,
        ),
        "Progressing",
        "step 12/40",
    ),
    (
        "succeeded",
        obj(
            "FineTuneJob",
            {
                "phase": "Succeeded",
                "observedGeneration": 2,
                "conditions": [cond("Succeeded", message="Adapter written"), cond("AuditPassed")],
            },
            generation=2,
        ),
        "Healthy",
        "Adapter written",
    ),
    (
        "generation-lags",
        obj(
            "FineTuneJob",
            {"phase": "Succeeded", "observedGeneration": 1, "conditions": [cond("Succeeded")]},
            generation=2,
        ),
        "Progressing",
        "observe generation 2",
    ),
    (
        "observed-generation-missing",
        obj("FineTuneJob", {"phase": "Running"}, generation=3),
        "Progressing",
        "generation 3",
    ),
    (
        "failed-phase",
        obj(
            "FineTuneJob",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [cond("Failed", reason="OOMKilled", message="Trainer OOMKilled")],
            },
        ),
        "Degraded",
        "Trainer OOMKilled",
    ),
    (
        "failed-condition-only",
        obj(
            "FineTuneJob",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("Failed", reason="DeadlineExceeded")],
            },
        ),
        "Degraded",
        "DeadlineExceeded",
    ),
    (
        "audit-failed",
        obj(
            "FineTuneJob",
            {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [
                    cond("Succeeded"),
                    cond("AuditPassed", "False", "AuditFailed", "canary exposure 12.3 > 8"),
                ],
            },
        ),
        "Degraded",
        "canary exposure 12.3 > 8",
    ),
    (
        "audit-failed-condition-type",
        obj(
            "FineTuneJob",
            {"phase": "Succeeded", "observedGeneration": 1, "conditions": [cond("AuditFailed")]},
        ),
        "Degraded",
        "Memorization audit failed",
    ),
    (
        "audit-not-yet",
        obj(
            "FineTuneJob",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [cond("AuditPassed", "Unknown", "Pending")],
            },
        ),
        "Progressing",
        "",
    ),
    (
        "queued-condition",
        obj(
            "FineTuneJob",
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [cond("Queued", message=("Waiting in LocalQueue gpu-queue"))],
            },
        ),
        "Suspended",
        "gpu-queue",
    ),
    (
        "queued-phase",
        obj("FineTuneJob", {"phase": "Queued", "observedGeneration": 1}),
        "Suspended",
        "Kueue",
    ),
    (
        "suspended-phase",
        obj("FineTuneJob", {"phase": "Suspended", "observedGeneration": 1}),
        "Suspended",
        "",
    ),
    (
        "queued-false",
        obj(
            "FineTuneJob",
            {
                "phase": "Running",
                "observedGeneration": 1,
                "conditions": [
                    cond("Queued", "False", "Admitted"),
                    cond("Running", message="Training"),
                ],
            },
        ),
        "Progressing",
        "Training",
    ),
]

MS_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no-status", obj("ModelServe", None), "Progressing", "operator"),
    # The conditions the operator really writes (status_serve.py).
    (
        "operator-audit-failed",
        obj(
            "ModelServe",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    cond("AdapterNotReady", "True", "AuditFailed", "job ftj1 failed its audit")
                ],
            },
        ),
        "Degraded",
        "failed its audit",
    ),
    (
        "operator-degraded",
        obj(
            "ModelServe",
            {
                "phase": "Degraded",
                "observedGeneration": 1,
                "readyReplicas": 1,
                "conditions": [
                    cond("AdapterNotReady", "False", "AdapterReady"),
                    cond("Available", "False", "ReplicasUnavailable", "1 of 2 replicas ready"),
                ],
            },
        ),
        "Degraded",
        "1 of 2 replicas ready",
    ),
    (
        "ready",
        obj(
            "ModelServe",
            {
                "phase": "Ready",
                "observedGeneration": 1,
                "readyReplicas": 2,
                "endpoint": "https://ms.ml.svc:8443",
                "conditions": [cond("Ready")],
            },
        ),
        "Healthy",
        "https://ms.ml.svc:8443",
    ),
    (
        "ready-generation-lags",
        obj(
            "ModelServe",
            {"phase": "Ready", "observedGeneration": 1, "conditions": [cond("Ready")]},
            generation=4,
        ),
        "Progressing",
        "generation 4",
    ),
    (
        "adapter-not-ready",
        obj(
            "ModelServe",
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [
                    cond("AdapterNotReady", message=("FineTuneJob fraud-lora is Running"))
                ],
            },
        ),
        "Progressing",
        "fraud-lora is Running",
    ),
    (
        "scaling",
        obj("ModelServe", {"phase": "Pending", "observedGeneration": 1, "readyReplicas": 1}),
        "Progressing",
        "Ready replicas: 1",
    ),
    (
        "degraded",
        obj(
            "ModelServe",
            {
                "phase": "Degraded",
                "observedGeneration": 1,
                "conditions": [cond("Ready", "False", "ReplicasUnavailable", "1/2 replicas ready")],
            },
        ),
        "Degraded",
        "1/2 replicas ready",
    ),
    (
        "failed",
        obj(
            "ModelServe",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [
                    cond("Failed", reason="AdapterTampered", message="adapter sha256 mismatch")
                ],
            },
        ),
        "Degraded",
        "sha256 mismatch",
    ),
    (
        "adapter-audit-failed",
        obj(
            "ModelServe",
            {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [cond("AuditPassed", "False", "AuditFailed")],
            },
        ),
        "Degraded",
        "AuditFailed",
    ),
    (
        "queued",
        obj(
            "ModelServe",
            {"phase": "Pending", "observedGeneration": 1, "conditions": [cond("Queued")]},
        ),
        "Suspended",
        "",
    ),
]


@pytest.mark.parametrize(("case", "o", "want", "msg"), FTJ_CASES, ids=[c[0] for c in FTJ_CASES])
def test_finetunejob_health(
    luas: list[str], case: str, o: dict[str, Any], want: str, msg: str
) -> None:
    for lua in luas:
        status, message = health(lua, FTJ, o)
        assert (status, lua) == (want, lua), message
        assert msg in message, (lua, message)


@pytest.mark.parametrize(("case", "o", "want", "msg"), MS_CASES, ids=[c[0] for c in MS_CASES])
def test_modelserve_health(
    luas: list[str], case: str, o: dict[str, Any], want: str, msg: str
) -> None:
    for lua in luas:
        status, message = health(lua, MS, o)
        assert (status, lua) == (want, lua), message
        assert msg in message, (lua, message)


def test_argocd_cm_snippet_embeds_the_checks() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.sealtune.io_FineTuneJob"] == FTJ.read_text()
    assert data["resource.customizations.health.sealtune.io_ModelServe"] == MS.read_text()
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack" / "gen_argocd_cm.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_application_examples_parse() -> None:
    for name in ("application-operator.yaml", "application-finetunejobs.yaml"):
        app = yaml.safe_load((ARGOCD / name).read_text())
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert app["spec"]["destination"]["namespace"]
