"""One fine-tuning job from a `TrainerConfig`: the path shared by the pod and the laptop.

keys -> verified model -> decrypted, redacted, tokenized data (+ canaries) -> DP-LoRA
training with encrypted checkpoints (resuming from the newest one) -> audit ->
encrypted adapter -> summary. Logs carry numbers and file names, never records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealtune_api.trainer_config import TrainerConfig

from .crypto import CryptoError, load_key, sha256_file

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float, float | None], None]  # step, total, loss, epsilon


class JobError(RuntimeError):
    """A failure with a stable reason for the status (the message is content-free)."""

    def __init__(self, reason: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class JobResult:
    summary: dict[str, Any]
    model: Any = None


def _pii_hmac_key(checkpoint_key: bytes, job_uid: str) -> bytes:
    """Per-job pseudonymization key: the same value gives the same token within one job."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"sealtune/v1/pii-pseudonym/" + job_uid.encode(),
    ).derive(checkpoint_key)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _binding(cfg: TrainerConfig, dataset_sha: str, plan_fp: list[Any]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: job, data, and every training knob."""
    knobs = {
        "training": cfg.training.wire(),
        "privacy": cfg.privacy.wire(),
        "pii": cfg.pii.wire(),
        "audit": cfg.audit.wire(),
        "format": cfg.dataset.format,
    }
    return {
        "job": cfg.job_name,
        "uid": cfg.job_uid,
        "dataset": dataset_sha,
        "config": hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest(),
        "plan": json.dumps(plan_fp),
    }


def run_job(
    cfg: TrainerConfig,
    *,
    device: str | None = None,
    progress: ProgressFn | None = None,
    stop_after_steps: int | None = None,
) -> JobResult:
    """Run the whole job; raise JobError with a reason and exit code on failure.

    `stop_after_steps` ends the run early after a checkpoint (tests and debugging only).
    """
    import torch

    from . import audit as audit_mod
    from .checkpoint import load_latest, save_checkpoint
    from .data import (
        DatasetFormatError,
        insert_canaries,
        load_encrypted_dataset,
        make_canaries,
        redact_records,
        split_held_out,
        tokenize_records,
    )
    from .metrics import TrainingMetrics
    from .model_loading import (
        ModelIntegrityError,
        QLoRAUnavailableError,
        add_lora,
        load_base_model,
        load_tokenizer,
        verify_model_dir,
    )
    from .output import write_encrypted_adapter
    from .summary import audit_summary, build_summary
    from .training import Trainer, make_plan, plan_fingerprint

    t_start = time.perf_counter()
    tc, pc = cfg.training, cfg.privacy
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = os.environ.get("SEALTUNE_CPU_THREADS")
    if threads and device == "cpu":
        # Tiny models gain nothing from intra-op threads, and on an oversubscribed host
        # OpenMP's spinning threads can make each step 10x slower.
        torch.set_num_threads(max(1, int(threads)))
    seed = tc.seed
    _seed_everything(seed)

    try:
        data_key = load_key(cfg.dataset.key_file)
        out_key = load_key(cfg.output_key_file)
        ckpt_key = load_key(cfg.checkpoint_key_file)
    except (CryptoError, OSError) as exc:
        raise JobError("KeyError", f"cannot load a key: {exc}", 5) from None

    try:
        verify_model_dir(cfg.model_dir, cfg.model_manifest_sha256)
        tokenizer = load_tokenizer(cfg.model_dir)
    except ModelIntegrityError as exc:
        raise JobError("ModelIntegrityError", str(exc), 4) from None
    except OSError as exc:
        msg = f"cannot load the model: {type(exc).__name__}"
        raise JobError("ModelLoadError", msg, 4) from None

    try:
        records = load_encrypted_dataset(cfg.dataset.path, data_key, cfg.dataset.format)
        dataset_sha = sha256_file(cfg.dataset.path)
    except DatasetFormatError as exc:
        raise JobError("DatasetFormatError", str(exc), 3) from None
    except CryptoError as exc:
        raise JobError("DatasetDecryptError", str(exc), 5) from None
    except FileNotFoundError:
        raise JobError("DatasetNotFound", f"dataset {cfg.dataset.path} not found", 3) from None
    log.info("dataset decrypted in memory", extra={"records": len(records)})

    redaction_counts: dict[str, int] = {}
    if cfg.pii.enabled:
        from .redact import Redactor

        redactor = Redactor(
            cfg.pii.entities, cfg.pii.mode, hmac_key=_pii_hmac_key(ckpt_key, cfg.job_uid)
        )
        records = redact_records(records, redactor.redact)
        redaction_counts = {k: int(v) for k, v in redactor.counts.items()}
        log.info("PII redacted", extra={"redactions": redaction_counts})

    train_records, held_records = split_held_out(records, cfg.audit.held_out_fraction, seed)
    try:
        train_ex = tokenize_records(tokenizer, train_records, tc.max_seq_length)
        held_ex = tokenize_records(tokenizer, held_records, tc.max_seq_length)
    except DatasetFormatError as exc:
        raise JobError("DatasetFormatError", str(exc), 3) from None
    canaries = make_canaries(cfg.audit.canaries, seed)
    if canaries:
        from .data import canary_record, tokenize_record

        fmt = cfg.dataset.format
        canary_ex = {
            i: tokenize_record(tokenizer, canary_record(i, s, fmt), tc.max_seq_length)
            for i, s in canaries
        }
        examples = insert_canaries(
            train_ex, [(i, canary_ex[i]) for i, _ in canaries], cfg.audit.canary_repetitions, seed
        )
    else:
        examples = list(train_ex)

    plan = make_plan(len(examples), tc, pc)
    log.info(
        "training plan",
        extra={
            "trainExamples": plan.n_train,
            "heldOut": len(held_ex),
            "steps": plan.total_steps,
            "sampleRate": round(plan.sample_rate, 6),
            "noiseMultiplier": plan.noise_multiplier,
        },
    )
    try:
        model = load_base_model(cfg.model_dir, tc, device)
    except QLoRAUnavailableError as exc:
        raise JobError("QLoRAUnavailable", str(exc), 2) from None
    torch.manual_seed(seed)
    model = add_lora(model, tc)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = Trainer(model, examples, tc, pc, plan, pad_id=pad_id, device=device)

    ckpt_dir = Path(cfg.checkpoint_dir)
    binding = _binding(cfg, dataset_sha, plan_fingerprint(plan))
    resumed_from: int | None = None
    state = load_latest(ckpt_dir, ckpt_key, binding)
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.step
        log.info("resumed from checkpoint", extra={"step": trainer.step})

    metrics = TrainingMetrics(cfg.job_name, cfg.metrics_port)
    first_loss: list[float] = []
    eps_last = [time.monotonic()]

    def on_step(stats: Any) -> None:
        if not first_loss:
            first_loss.append(stats.loss)
        eps: float | None = None
        # Epsilon so far costs ~0.2-1 s with PRV: refresh it every 15 s and at the end.
        if time.monotonic() - eps_last[0] >= 15.0 or stats.step == plan.total_steps:
            eps = trainer.epsilon()
            eps_last[0] = time.monotonic()
        metrics.update(
            step=stats.step,
            total=plan.total_steps,
            loss=stats.loss,
            tokens_per_second=stats.tokens / max(stats.seconds, 1e-9),
            epsilon=eps,
        )
        if stats.step % cfg.checkpoint_interval_steps == 0 and stats.step < plan.total_steps:
            save_checkpoint(ckpt_dir, ckpt_key, trainer.state_dict(), binding)
        if progress is not None:
            progress(stats.step, plan.total_steps, stats.loss, eps)
        if eps is not None or stats.step % 10 == 0:
            log.info(
                "step",
                extra={
                    "step": stats.step,
                    "totalSteps": plan.total_steps,
                    "epoch": stats.epoch,
                    "loss": round(stats.loss, 5),
                    "samples": stats.samples,
                    **(
                        {"epsilon": round(eps, 4)} if eps is not None and math.isfinite(eps) else {}
                    ),
                },
            )
        if stop_after_steps is not None and stats.step >= stop_after_steps:
            raise _Stop()

    try:
        trainer.run(on_step)
    except _Stop:
        metrics.close()
        return JobResult(summary={"job": cfg.job_name, "phase": "Stopped", "steps": trainer.step})
    finally:
        metrics.close()
    epsilon = trainer.epsilon()
    # The final state is checkpointed too: a kill during audit/output resumes without training.
    save_checkpoint(ckpt_dir, ckpt_key, trainer.state_dict(), binding)

    audit_res = audit_mod.run_audit(
        model,
        tokenizer,
        cfg.audit,
        canaries=canaries,
        members=train_ex,
        non_members=held_ex,
        fmt=cfg.dataset.format,
        max_length=tc.max_seq_length,
        pad_id=pad_id,
        device=device,
        seed=seed,
    )
    adapter_path, adapter_sha = write_encrypted_adapter(model, Path(cfg.output_dir), out_key)
    summary = build_summary(
        job=cfg.job_name,
        dp_enabled=plan.private,
        epsilon=epsilon,
        target_epsilon=pc.target_epsilon,
        delta=pc.delta,
        noise_multiplier=plan.noise_multiplier,
        accountant=pc.accountant,
        steps=trainer.step,
        total_steps=plan.total_steps,
        epochs=tc.epochs,
        final_loss=trainer.last_loss,
        first_loss=first_loss[0] if first_loss else None,
        train_records=len(train_ex),
        held_out_records=len(held_ex),
        redactions=redaction_counts,
        audit=audit_summary(audit_res),
        adapter_path=str(adapter_path),
        adapter_sha256=adapter_sha,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - t_start,
    )
    return JobResult(summary=summary, model=model)


class _Stop(Exception):
    pass
