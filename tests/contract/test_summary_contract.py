"""The trainer -> operator contract, end to end through the real code on both sides.

The trainer's own builder (`sealtune_trainer.summary.build_summary`) makes a summary and
writes it as its termination message; the text goes into a pod exactly as the kubelet
reports it, and the operator's own `observe` + `job_status` map it to the FineTuneJob's
status. The result must validate against the status model and fit the CRD's schema (the
API server prunes what the schema does not declare, so a drift would vanish silently).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sealtune_api.crdgen import finetunejob_crd
from sealtune_api.finetunejob import FineTuneJobStatus
from sealtune_api.summary import MAX_BYTES, TrainerSummary
from sealtune_api.trainer_config import PrivacyConfig
from sealtune_operator.finetunejob import status as operator_status
from sealtune_trainer.audit import AuditResult
from sealtune_trainer.summary import build_summary, error_summary, write_termination_message

Manifest = dict[str, Any]

JOB = "notes-lora"
SHA = "c" * 64
ADAPTER = "clinical-notes-lora/adapter.tar.enc"  # relative to the output PVC
DONE = "2025-03-01T11:00:00Z"
AT = "2025-03-01T12:00:00Z"
PLAN = SimpleNamespace(private=True, total_steps=40, noise_multiplier=1.07, sample_rate=0.02)
# Private-data statistics that the contract removed; none may reach the status.
FORBIDDEN_KEYS = {"loss", "finalLoss", "firstLoss", "redactions", "membershipAuc"}


def audit_result(**changes: Any) -> AuditResult:
    fields: dict[str, Any] = {
        "canaries": 10,
        "canary_repetitions": 4,
        "exposures": [1.2, 0.8, 2.5, 1.9, 0.4, 1.1, 3.0, 0.9, 1.6, 1.4],
        "mean_exposure": 1.48,
        "max_exposure": 3.0,
        "max_canary_exposure": 8.0,
        "epsilon_lower_bound": 0.35,
        # Computed for benchmarks only; the job must never release it.
        "membership_auc": 0.93,
        "members": 900,
        "non_members": 100,
        "verdict": "passed",
    }
    fields.update(changes)
    return AuditResult(**fields)


def trainer_summary(
    audit: AuditResult | None, plan: Any = PLAN, epsilon: float = 3.21
) -> TrainerSummary:
    """A summary made by the trainer's real builder."""
    return build_summary(
        job=JOB,
        plan=plan,
        privacy=PrivacyConfig(),
        epsilon=epsilon,
        group_epsilon={"2": 6.9, "5": 19.4, "10": 48.0},
        steps=40,
        epochs=2,
        train_records=900,
        held_out_records=100,
        audit=audit,
        adapter_path=ADAPTER,
        adapter_sha256=SHA,
        resumed_from_step=None,
        seconds=123.456,
    )


def written(tmp_path: Path, summary: TrainerSummary) -> str:
    """The termination message as the trainer writes it, read back from the file."""
    path = tmp_path / "termination-log"
    text = write_termination_message(path, summary)
    on_disk = path.read_text(encoding="utf-8")
    assert on_disk == text
    return on_disk


def trainer_pod(message: str, phase: str = "Succeeded", exit_code: int = 0) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{JOB}-trainer-x1", "creationTimestamp": "2025-03-01T10:00:00Z"},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": "2025-03-01T10:00:00Z",
                            "finishedAt": DONE,
                        }
                    },
                }
            ],
        },
    }


def trainer_job(ctype: str = "Complete", reason: str = "") -> Manifest:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{JOB}-trainer"},
        "spec": {},
        "status": {
            "startTime": "2025-03-01T10:00:00Z",
            **({"completionTime": DONE} if ctype == "Complete" else {}),
            "conditions": [
                {"type": ctype, "status": "True", "reason": reason, "lastTransitionTime": DONE}
            ],
        },
    }


def operator_view(message: str, job: Manifest | None = None, **pod: Any) -> Manifest:
    """The FineTuneJob status the real operator computes from a pod with this message."""
    obs = operator_status.observe(job or trainer_job(), [trainer_pod(message, **pod)])
    return operator_status.job_status({}, 1, f"{JOB}-trainer", obs, at=AT)


def keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys(v)}
    return set()


STATUS_SCHEMA = finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
    "status"
]
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_problems(value: Any, schema: Manifest, path: str = "status") -> list[str]:
    """What the API server would prune or reject (the subset of OpenAPI the CRD uses)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems: list[str] = []
    kind = schema.get("type")
    if kind and not isinstance(value, JSON_TYPES[kind]):
        return [f"{path}: {value!r} is not {kind}"]
    if kind in ("integer", "number") and isinstance(value, bool):
        return [f"{path}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{path}: {value!r} is not JSON")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        problems += [
            f"{path}.{k}: required" for k in schema.get("required") or [] if k not in value
        ]
        for k, v in value.items():
            if k in props:
                problems += schema_problems(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                problems += schema_problems(v, extra, f"{path}.{k}")
            else:
                problems.append(f"{path}.{k}: not in the CRD schema (would be pruned)")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            problems += schema_problems(v, schema["items"], f"{path}[{i}]")
    return problems


def check_status(status: Manifest) -> FineTuneJobStatus:
    assert not keys(status) & FORBIDDEN_KEYS, keys(status) & FORBIDDEN_KEYS
    assert not schema_problems(status, STATUS_SCHEMA), schema_problems(status, STATUS_SCHEMA)
    json.dumps(status, allow_nan=False)
    return FineTuneJobStatus.model_validate(status)


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("audited", [False, True], ids=["no-audit", "audit"])
def test_trainer_summary_becomes_the_job_status(tmp_path: Path, audited: bool) -> None:
    summary = trainer_summary(audit_result() if audited else None)
    message = written(tmp_path, summary)
    assert len(message.encode()) <= MAX_BYTES
    assert not keys(json.loads(message)) & FORBIDDEN_KEYS
    assert "membership" not in message.lower()  # audit_result() computed one: not released
    assert TrainerSummary.parse(message) == summary

    status = operator_view(message)
    model = check_status(status)
    assert model.phase == "Succeeded"
    privacy = model.privacy
    assert privacy is not None
    assert privacy.dp_enabled is True
    assert privacy.epsilon_spent == 3.21
    assert privacy.target_epsilon == PrivacyConfig().target_epsilon
    assert privacy.delta == PrivacyConfig().delta
    assert privacy.accountant == PrivacyConfig().accountant
    assert privacy.noise_multiplier == 1.07
    assert privacy.group_epsilon == {"2": 6.9, "5": 19.4, "10": 48.0}
    assert privacy.ledger and privacy.ledger == summary.privacy.ledger  # type: ignore[union-attr]
    adapter_entry = privacy.ledger[0]
    assert (adapter_entry.statistic, adapter_entry.epsilon) == ("adapter", 3.21)
    released = {e.statistic for e in privacy.ledger}
    assert ("audit (canaries only)" in released) is audited
    assert model.output is not None
    assert (model.output.path, model.output.sha256) == (ADAPTER, SHA)
    assert model.progress is not None
    assert (model.progress.step, model.progress.total_steps, model.progress.percent) == (
        40,
        40,
        100,
    )
    if audited:
        assert model.audit is not None
        assert model.audit.verdict == "passed"
        assert model.audit.canary_exposure == 1.48
        assert model.audit.epsilon_lower_bound == 0.35
    else:
        assert model.audit is None and "AuditPassed" not in {c.type for c in model.conditions}


def test_without_dp_the_status_claims_no_epsilon(tmp_path: Path) -> None:
    plan = SimpleNamespace(**{**vars(PLAN), "private": False, "noise_multiplier": 0.0})
    summary = trainer_summary(None, plan=plan, epsilon=math.inf)
    status = operator_view(written(tmp_path, summary))
    model = check_status(status)
    assert model.phase == "Succeeded"
    assert model.privacy is not None and model.privacy.dp_enabled is False
    assert "epsilonSpent" not in status["privacy"] and "targetEpsilon" not in status["privacy"]
    assert model.privacy.ledger is not None
    assert model.privacy.ledger[0].mechanism.startswith("none")


# --------------------------------------------------------------------------- failures


def test_failed_audit_fails_the_job_with_its_reasons(tmp_path: Path) -> None:
    why = "canary exposure 9.7 bits > 8.0"
    summary = trainer_summary(
        audit_result(verdict="failed", reasons=[why], mean_exposure=9.7, epsilon_lower_bound=4.4)
    )
    status = operator_view(written(tmp_path, summary))
    model = check_status(status)
    assert model.phase == "Failed"
    failed = next(c for c in model.conditions if c.type == "Failed")
    assert failed.reason == "AuditFailed" and why in failed.message
    assert model.audit is not None and model.audit.reasons == [why]
    assert model.audit.epsilon_lower_bound == 4.4
    assert model.output is not None and model.output.sha256 == SHA


def test_trainer_error_reaches_the_status(tmp_path: Path) -> None:
    message = written(tmp_path, error_summary(JOB, "DatasetDecryptError", "wrong key " * 500))
    assert len(message.encode()) <= MAX_BYTES
    status = operator_view(
        message, job=trainer_job("Failed", "PodFailurePolicy"), phase="Failed", exit_code=5
    )
    model = check_status(status)
    failed = next(c for c in model.conditions if c.type == "Failed")
    assert (model.phase, failed.reason) == ("Failed", "DatasetDecryptError")
    assert failed.message.startswith("wrong key")


def test_a_clean_exit_without_summary_is_not_success() -> None:
    model = check_status(operator_view(""))
    failed = next(c for c in model.conditions if c.type == "Failed")
    assert (model.phase, failed.reason) == ("Failed", "NoSummary")


# ------------------------------------------------------------------------------ size


def test_the_message_fits_the_kubelet_limit_and_keeps_what_matters(tmp_path: Path) -> None:
    exposures = [(i % 97) / 9.7 for i in range(1000)]
    reasons = [f"reason {i}: " + "canary exposure far above the threshold " * 12 for i in range(20)]
    audit = audit_result(verdict="failed", exposures=exposures, reasons=reasons)
    summary = trainer_summary(audit)
    assert summary.audit is not None and len(summary.audit.exposures or []) == 1000
    assert len(json.dumps(summary.wire()).encode()) > MAX_BYTES  # it really had to shrink

    message = summary.to_message()
    assert len(message.encode()) <= MAX_BYTES
    assert written(tmp_path, summary) == message
    parsed = TrainerSummary.parse(message)
    assert parsed is not None
    assert parsed.audit is not None and parsed.audit.verdict == "failed"
    assert parsed.audit.reasons and parsed.audit.reasons[0].startswith("reason 0:")
    assert parsed.audit.epsilon_lower_bound == 0.35
    assert parsed.privacy is not None and parsed.privacy.epsilon == 3.21
    assert parsed.privacy.target_epsilon == PrivacyConfig().target_epsilon
    assert parsed.privacy.ledger, "the ledger is never shed entirely"
    assert parsed.adapter is not None and parsed.adapter.sha256 == SHA
    assert parsed.adapter.path == ADAPTER

    status = operator_view(message)
    model = check_status(status)
    assert model.phase == "Failed"
    assert next(c for c in model.conditions if c.type == "Failed").reason == "AuditFailed"
    assert model.privacy is not None and model.privacy.epsilon_spent == 3.21
    assert model.output is not None and model.output.sha256 == SHA
