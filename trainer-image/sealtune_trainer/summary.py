"""The result summary: what the operator copies into the FineTuneJob's status.

Written as compact JSON to the container's termination-message path, which Kubernetes
truncates at 4096 bytes, so `compact()` drops detail (per-canary exposures, then long
reasons) until it fits. Numbers, digests and counts only: no dataset text, no keys.
Keys are camelCase like the rest of the API. Without DP, `privacy.epsilon` is the
string "Infinity" (JSON has no infinite number) and `dpEnabled` is false.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

MAX_BYTES = 4096


def _num(x: float | None, digits: int = 6) -> float | None:
    if x is None or math.isnan(x):
        return None
    return round(float(x), digits)


def build_summary(
    *,
    job: str,
    dp_enabled: bool,
    epsilon: float,
    target_epsilon: float | None,
    delta: float | None,
    noise_multiplier: float | None,
    accountant: str | None,
    steps: int,
    total_steps: int,
    epochs: int,
    final_loss: float,
    first_loss: float | None,
    train_records: int,
    held_out_records: int,
    redactions: dict[str, int],
    audit: dict[str, Any] | None,
    adapter_path: str | None,
    adapter_sha256: str | None,
    resumed_from_step: int | None,
    seconds: float,
) -> dict[str, Any]:
    eps: float | str | None = "Infinity" if math.isinf(epsilon) else _num(epsilon)
    summary: dict[str, Any] = {
        "job": job,
        "phase": "Succeeded",
        "privacy": {
            "dpEnabled": dp_enabled,
            "epsilon": eps,
            "targetEpsilon": target_epsilon if dp_enabled else None,
            "delta": delta if dp_enabled else None,
            "noiseMultiplier": _num(noise_multiplier),
            "accountant": accountant if dp_enabled else None,
        },
        "steps": steps,
        "totalSteps": total_steps,
        "epochs": epochs,
        "finalLoss": _num(final_loss),
        "firstLoss": _num(first_loss),
        "records": {"train": train_records, "heldOut": held_out_records},
        "redactions": dict(sorted(redactions.items())),
        "audit": audit,
        "adapter": {"path": adapter_path, "sha256": adapter_sha256} if adapter_path else None,
        "resumedFromStep": resumed_from_step,
        "seconds": round(seconds, 2),
    }
    return summary


def audit_summary(result: Any) -> dict[str, Any]:
    """camelCase audit block from an `audit.AuditResult`."""
    d = result.as_dict()
    return {
        "verdict": d["verdict"],
        "reasons": d["reasons"],
        "membershipAuc": d["membership_auc"],
        "membershipAucThreshold": d["membership_auc_threshold"],
        "members": d["members"],
        "nonMembers": d["non_members"],
        "canaries": d["canaries"],
        "canaryRepetitions": d["canary_repetitions"],
        "canaryExposure": d["mean_exposure"],
        "canaryExposureMax": d["max_exposure"],
        "maxPossibleExposure": d["max_possible_exposure"],
        "maxCanaryExposure": d["max_canary_exposure"],
        "exposures": d["exposures"],
    }


def error_summary(job: str, reason: str, message: str) -> dict[str, Any]:
    return {"job": job, "phase": "Failed", "error": {"reason": reason, "message": message[:1000]}}


def compact(summary: dict[str, Any], limit: int = MAX_BYTES) -> str:
    """Serialize, shedding detail until it fits in `limit` bytes."""
    data = json.loads(json.dumps(summary))  # deep copy

    def dump() -> str:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    text = dump()
    audit = data.get("audit")
    if len(text.encode()) > limit and isinstance(audit, dict):
        audit.pop("exposures", None)
        text = dump()
    if len(text.encode()) > limit and isinstance(audit, dict):
        audit["reasons"] = [str(r)[:120] for r in audit.get("reasons", [])[:3]]
        text = dump()
    for key in ("records", "resumedFromStep", "seconds", "firstLoss"):
        if len(text.encode()) <= limit:
            break
        data.pop(key, None)
        text = dump()
    if len(text.encode()) > limit and isinstance(data.get("error"), dict):
        data["error"]["message"] = data["error"]["message"][:200]
        text = dump()
    return text


def write_termination_message(path: str | Path, summary: dict[str, Any]) -> str:
    """Write the compact summary; a missing parent directory (laptop runs) is not an error."""
    text = compact(summary)
    p = Path(path)
    try:
        if p.parent.is_dir():
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError:
        pass
    return text
