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
FTJ_SCRIPT = ARGOCD / "health-finetunejob.lua"
MS_SCRIPT = ARGOCD / "health-modelserve.lua"


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


Case = tuple[str, dict[str, Any], str, str]


def case(
    name: str,
    kind: str,
    want: str,
    msg: str,
    phase: str | None,
    *conditions: dict[str, Any],
    generation: int = 1,
    **status: Any,
) -> Case:
    """(id, object, expected health, substring of the message); observedGeneration 1
    unless given, a phase and conditions, and any other status fields."""
    body = {"observedGeneration": 1, **status, "conditions": list(conditions)}
    if phase is not None:
        body["phase"] = phase
    return (f"{kind}-{name}", obj(kind, body, generation), want, msg)


FTJ, MS = "FineTuneJob", "ModelServe"
WAITING_PVC = cond("ResourcesReady", "False", "WaitingForPVC", "Waiting for checkpoint PVC")
# Hand-written objects: every branch, including shapes older operators wrote.
CASES: list[Case] = [
    (f"{FTJ}-no-status", obj(FTJ, None), "Progressing", "Waiting for the Sealtune operator"),
    case("pending", FTJ, "Progressing", "checkpoint PVC", "Pending", WAITING_PVC),
    case(
        "running-progress",
        FTJ,
        "Progressing",
        "step 120/400",
        "Running",
        cond("Running"),
        progress={"step": 120, "totalSteps": 400, "epoch": 1.0},
    ),
    case(
        "running-floats",
        FTJ,
        "Progressing",
        "step 12/40",
        "Running",
        observedGeneration=1.0,
        progress={"step": 12.0, "totalSteps": 40.0},
    ),
    case(
        "succeeded",
        FTJ,
        "Healthy",
        "Adapter written",
        "Succeeded",
        cond("Succeeded", message="Adapter written"),
        cond("AuditPassed"),
        generation=2,
        observedGeneration=2,
    ),
    case("generation-lags", FTJ, "Progressing", "observe generation 2", "Succeeded", generation=2),
    (f"{FTJ}-no-observed", obj(FTJ, {"phase": "Running"}, 3), "Progressing", "generation 3"),
    case(
        "failed-phase",
        FTJ,
        "Degraded",
        "Trainer OOMKilled",
        "Failed",
        cond("Failed", reason="OOMKilled", message="Trainer OOMKilled"),
    ),
    case(
        "failed-condition-only",
        FTJ,
        "Degraded",
        "DeadlineExceeded",
        "Running",
        cond("Failed", reason="DeadlineExceeded"),
    ),
    case(
        "audit-failed",
        FTJ,
        "Degraded",
        "canary exposure 12.3 > 8",
        "Succeeded",
        cond("Succeeded"),
        cond("AuditPassed", "False", "AuditFailed", "canary exposure 12.3 > 8"),
    ),
    case(
        "audit-failed-type", FTJ, "Degraded", "Memorization audit", "Succeeded", cond("AuditFailed")
    ),
    case("audit-unknown", FTJ, "Progressing", "", "Running", cond("AuditPassed", "Unknown", "x")),
    case("queued", FTJ, "Suspended", "gpu-queue", "Pending", cond("Queued", message="gpu-queue")),
    case("queued-phase", FTJ, "Suspended", "Kueue", "Queued"),
    case("suspended-phase", FTJ, "Suspended", "", "Suspended"),
    case(
        "admitted",
        FTJ,
        "Progressing",
        "Training",
        "Running",
        cond("Queued", "False", "Admitted"),
        cond("Running", message="Training"),
    ),
    (f"{MS}-no-status", obj(MS, None), "Progressing", "operator"),
    case(
        "degraded",
        MS,
        "Degraded",
        "1 of 2 replicas ready",
        "Degraded",
        cond("AdapterReady", "True", "AdapterReady"),
        cond("Available", "False", "ReplicasUnavailable", "1 of 2 replicas ready"),
        readyReplicas=1,
    ),
    case(
        "ready",
        MS,
        "Healthy",
        "https://ms.ml.svc:8443",
        "Ready",
        cond("Ready"),
        readyReplicas=2,
        endpoint="https://ms.ml.svc:8443",
    ),
    case("ready-generation-lags", MS, "Progressing", "generation 4", "Ready", generation=4),
    case(
        "adapter-not-ready",
        MS,
        "Progressing",
        "fraud-lora is Running",
        "Pending",
        cond("AdapterReady", "False", "FineTuneJobRunning", "FineTuneJob fraud-lora is Running"),
    ),
    # What operators before the positive-polarity `AdapterReady` wrote.
    case(
        "legacy-adapter-not-ready",
        MS,
        "Progressing",
        "fraud-lora is Running",
        "Pending",
        cond("AdapterNotReady", message="FineTuneJob fraud-lora is Running"),
    ),
    case(
        "legacy-audit-failed",
        MS,
        "Degraded",
        "failed its audit",
        "Failed",
        cond("AdapterNotReady", "True", "AuditFailed", "job ftj1 failed its audit"),
    ),
    case("scaling", MS, "Progressing", "Ready replicas: 1", "Pending", readyReplicas=1),
    case(
        "failed",
        MS,
        "Degraded",
        "sha256 mismatch",
        "Failed",
        cond("Failed", reason="AdapterTampered", message="adapter sha256 mismatch"),
    ),
    case(
        "adapter-audit-failed",
        MS,
        "Degraded",
        "AuditFailed",
        "Pending",
        cond("AuditPassed", "False", "AuditFailed"),
    ),
    case("queued", MS, "Suspended", "", "Pending", cond("Queued")),
]


def operator_cases() -> list[Case]:
    """Statuses the operator's own status layer writes (so the checks cannot drift from it)."""
    from tests.chart.chartlib import REPO as repo
    from tests.operator.test_status_finetune import completed_job, job, pod, summary, waiting
    from tests.operator.test_status_modelserve import deploy, rolled_out

    from sealtune_api.modelserve import ModelServeSpec
    from sealtune_operator.finetunejob import status as ftj
    from sealtune_operator.modelserve import status as ms

    spec = yaml.safe_load((repo / "examples" / "modelserve.yaml").read_text())["spec"]
    ms_spec = ModelServeSpec.model_validate(spec)

    def job_status(*observed: Any, **kw: Any) -> dict[str, Any]:
        return ftj.job_status({}, 1, "x-trainer", ftj.observe(*observed, **kw), at="t0")

    waiting_ms = ms.waiting_status({}, 1, ms.resolve_adapter(ms_spec, None))
    audit_failed = ms.AdapterState(None, "AuditFailed", "job ftj1 failed its memorization audit")
    first = rolled_out(waiting_ms)
    rolling = ms.serve_status(first, 1, 2, deploy(1))
    serving = ms.serve_status(rolling, 1, 2, deploy(2))
    done = [pod(message=summary().to_message())]
    return [
        (
            f"{FTJ}-operator-succeeded",
            obj(FTJ, job_status(completed_job(), done)),
            "Healthy",
            "trained",
        ),
        (
            f"{FTJ}-operator-stuck",
            obj(FTJ, job_status(job(active=1), [waiting()], start_timeout=0)),
            "Progressing",
            "describe pod",
        ),
        (f"{MS}-operator-waiting", obj(MS, waiting_ms), "Progressing", "does not exist"),
        (
            f"{MS}-operator-audit-failed",
            obj(MS, ms.waiting_status({}, 1, audit_failed)),
            "Degraded",
            "memorization audit",
        ),
        (f"{MS}-operator-first-rollout", obj(MS, rolling), "Progressing", "1/2 serving pods"),
        (f"{MS}-operator-ready", obj(MS, serving), "Healthy", "2/2 serving pods ready"),
        (
            f"{MS}-operator-degraded",
            obj(MS, ms.serve_status(serving, 1, 2, deploy(1))),
            "Degraded",
            "1/2 serving pods",
        ),
    ]


ALL = CASES + operator_cases()


@pytest.mark.parametrize(("case_id", "o", "want", "msg"), ALL, ids=[c[0] for c in ALL])
def test_health(luas: list[str], case_id: str, o: dict[str, Any], want: str, msg: str) -> None:
    script = FTJ_SCRIPT if o["kind"] == FTJ else MS_SCRIPT
    for lua in luas:
        status, message = health(lua, script, o)
        assert (status, lua) == (want, lua), message
        assert msg in message, (lua, message)


def test_argocd_cm_snippet_embeds_the_checks() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    data = cm["data"]
    assert data["resource.customizations.health.sealtune.io_FineTuneJob"] == FTJ_SCRIPT.read_text()
    assert data["resource.customizations.health.sealtune.io_ModelServe"] == MS_SCRIPT.read_text()
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
