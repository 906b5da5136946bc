"""Build the trainer's `TrainerSummary` (the contract lives in `sealtune_api.summary`).

This is where the privacy ledger is assembled: every statistic the summary carries is
listed with the mechanism that makes it safe to release. Public by declaration: the
dataset size N and the held-out count (the split is a keyed hash, its size ~ N x share),
the sampling rate q, the steps T, the noise multiplier sigma and the clipping norm C, the
training time, digests. Released through DP-SGD: the adapter (its epsilon is the job's).
Post-processing of the DP adapter and of canaries (made-up secrets, not private data):
the audit. Nothing else leaves the pod.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sealtune_api.summary import (
    LedgerEntry,
    SummaryAdapter,
    SummaryAudit,
    SummaryPrivacy,
    SummaryRecords,
    TrainerSummary,
    finite,
)
from sealtune_api.trainer_config import PrivacyConfig

PUBLIC = "public"
POST = "post-processing"


def ledger(
    dp_enabled: bool, epsilon: float | None, audited: bool, shares: dict[str, float] | None = None
) -> list[LedgerEntry]:
    """Every released statistic with its mechanism and epsilon share.

    `shares` holds each DP mechanism's epsilon alone; `epsilon` is the accountant's
    composition of all of them (smaller than their sum)."""
    shares = shares or {}
    entries = [
        LedgerEntry(
            statistic="adapter",
            mechanism="DP-SGD (Poisson-subsampled Gaussian, per-sample clipping)"
            if dp_enabled
            else "none (DP disabled: no guarantee)",
            epsilon=finite(shares.get("adapter", epsilon)) if dp_enabled else None,
        ),
        LedgerEntry(statistic="privacy.epsilon (accountant)", mechanism=POST),
        LedgerEntry(statistic="records.train, records.heldOut (N)", mechanism=PUBLIC),
        LedgerEntry(statistic="sampleRate, noiseMultiplier, maxGradNorm", mechanism=PUBLIC),
        LedgerEntry(statistic="steps, totalSteps, epochs, seconds", mechanism=PUBLIC),
        LedgerEntry(statistic="adapter.sha256", mechanism=POST),
    ]
    if "trainingLoss" in shares:
        entries.append(
            LedgerEntry(
                statistic="noisedLoss (training loss, clipped, every k steps)",
                mechanism="Gaussian (Poisson-subsampled, sensitivity lossClip)",
                epsilon=finite(shares["trainingLoss"]),
            )
        )
    if dp_enabled:
        entries.append(
            LedgerEntry(
                statistic="total (composed by the accountant)",
                mechanism="composition",
                epsilon=epsilon,
            )
        )
    if audited:
        entries.append(LedgerEntry(statistic="audit (canaries only)", mechanism=POST))
    return entries


def build_summary(
    *,
    job: str,
    plan: Any,
    privacy: PrivacyConfig,
    epsilon: float,
    group_epsilon: dict[str, float],
    steps: int,
    epochs: int,
    train_records: int,
    held_out_records: int,
    audit: Any,
    adapter_path: str | None,
    adapter_sha256: str | None,
    resumed_from_step: int | None,
    seconds: float,
    shares: dict[str, float] | None = None,
    noised_loss: list[float] | None = None,
) -> TrainerSummary:
    dp_enabled = bool(plan.private)
    eps = finite(epsilon)
    audited = audit is not None and (audit.canaries > 0)
    return TrainerSummary(
        job=job,
        phase="Succeeded",
        privacy=SummaryPrivacy(
            dp_enabled=dp_enabled,
            epsilon=eps if dp_enabled else None,
            target_epsilon=privacy.target_epsilon if dp_enabled else None,
            delta=privacy.delta if dp_enabled else None,
            noise_multiplier=finite(plan.noise_multiplier),
            sample_rate=finite(plan.sample_rate),
            max_grad_norm=privacy.max_grad_norm if dp_enabled else None,
            accountant=privacy.accountant if dp_enabled else None,
            unit=privacy.unit,
            group_epsilon={k: v for k, v in group_epsilon.items() if finite(v) is not None},
            ledger=ledger(dp_enabled, eps if dp_enabled else None, audited, shares),
        ),
        steps=steps,
        total_steps=plan.total_steps,
        epochs=epochs,
        records=SummaryRecords(train=train_records, held_out=held_out_records),
        noised_loss=[round(x, 4) for x in noised_loss] if noised_loss else None,
        noised_loss_interval=plan.loss_release_interval or None if noised_loss else None,
        audit=audit_summary(audit) if audit is not None else None,
        adapter=SummaryAdapter(path=adapter_path, sha256=adapter_sha256)
        if adapter_path and adapter_sha256
        else None,
        resumed_from_step=resumed_from_step,
        seconds=round(seconds, 2),
    )


def audit_summary(result: Any) -> SummaryAudit:
    """The audit block from an `audit.AuditResult` (canary statistics only)."""
    d = result.as_dict()
    return SummaryAudit(
        verdict=d["verdict"],
        reasons=d["reasons"],
        canaries=d["canaries"],
        canary_repetitions=d["canary_repetitions"],
        canary_exposure=d["mean_exposure"],
        canary_exposure_max=d["max_exposure"],
        max_possible_exposure=d["max_possible_exposure"],
        max_canary_exposure=d["max_canary_exposure"],
        epsilon_lower_bound=d["epsilon_lower_bound"],
        membership_auc_calibrated=d["membership_auc_calibrated"],
        tpr_at_fpr={k: [round(x, 4) for x in v] for k, v in d["tpr_at_fpr"].items()} or None,
        exposures=d["exposures"] or None,
    )


def error_summary(job: str, reason: str, message: str) -> TrainerSummary:
    return TrainerSummary.failure(job, reason, message)


def write_termination_message(path: str | Path, summary: TrainerSummary) -> str:
    """Write the compact summary; a missing parent directory (laptop runs) is not an error."""
    text = summary.to_message()
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
