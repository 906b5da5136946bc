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

from sealtune_api.exitcodes import ExitCode
from sealtune_api.summary import TrainerSummary
from sealtune_api.trainer_config import TrainerConfig

from .crypto import CryptoError, load_key, sha256_file
from .randomness import SecretRandomness

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float | None], None]  # step, total, epsilon so far


class JobError(RuntimeError):
    """A failure with a stable reason for the status (the message is content-free)."""

    def __init__(self, reason: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


@dataclass
class JobResult:
    summary: TrainerSummary
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


def _join(root: str, name: str) -> str:
    return f"{root.strip('/')}/{name}" if root.strip("/") else name


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
        privacy_units,
        redact_records,
        split_held_out,
        tokenize_records,
    )
    from .metrics import TrainingMetrics
    from .model_loading import (
        QLoRAUnavailableError,
        add_lora,
        load_base_model,
    )
    from .output import write_encrypted_adapter
    from .summary import build_summary
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

    data_key, out_key, ckpt_key = _load_keys(cfg)
    # All privacy-protecting randomness derives from the per-job key, not from the spec.
    randomness = SecretRandomness.derive(ckpt_key, cfg.job_uid)

    tokenizer = _verified_tokenizer(cfg)

    records, dataset_sha = _decrypt_records(cfg, data_key)
    log.info("dataset decrypted in memory", extra={"records": len(records)})

    if cfg.pii.enabled:
        from .redact import Redactor

        redactor = Redactor(
            cfg.pii.entities, cfg.pii.mode, hmac_key=_pii_hmac_key(ckpt_key, cfg.job_uid)
        )
        records = redact_records(records, redactor.redact)
        # Exact counts are a statistic of the private data with unbounded sensitivity:
        # they stay in the pod (not in logs, metrics or the summary).
        log.info("PII redacted", extra={"entities": list(cfg.pii.entities)})

    train_records, held_records = split_held_out(records, cfg.audit.held_out_fraction, randomness)
    if pc.unit == "user":
        from .data import cap_records_per_user

        train_records = cap_records_per_user(train_records, pc.max_records_per_user, randomness)
    try:
        train_ex = tokenize_records(tokenizer, train_records, tc.max_seq_length)
        held_ex = tokenize_records(tokenizer, held_records, tc.max_seq_length)
    except DatasetFormatError as exc:
        raise JobError("DatasetFormatError", str(exc), ExitCode.DATASET) from None
    canaries, included, examples = _with_canaries(cfg, tokenizer, train_ex, randomness)

    # User-level DP: the plan, the sampling and the accountant count users, not records.
    units = privacy_units(examples) if pc.unit == "user" and pc.enabled else None
    plan = make_plan(len(units) if units is not None else len(examples), tc, pc)
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
        raise JobError("QLoRAUnavailable", str(exc), ExitCode.USAGE) from None
    torch.manual_seed(seed)
    model = add_lora(model, tc)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = Trainer(
        model,
        examples,
        tc,
        pc,
        plan,
        pad_id=pad_id,
        randomness=randomness,
        device=device,
        units=units,
    )

    ckpt_dir = Path(cfg.checkpoint_dir)
    binding = _binding(cfg, dataset_sha, plan_fingerprint(plan))
    resumed_from: int | None = None
    state = load_latest(ckpt_dir, ckpt_key, binding)
    if state is not None:
        trainer.load_state_dict(state)
        resumed_from = trainer.step
        log.info("resumed from checkpoint", extra={"step": trainer.step})

    metrics = TrainingMetrics(cfg.job_name, cfg.metrics_port)
    eps_last = [time.monotonic()]
    noised_losses: list[float] = []

    # Privacy ledger: only public-by-declaration numbers (step, T, epsilon so far, timing)
    # leave the pod while training; never the loss, batch sizes or token counts.
    def on_step(stats: Any) -> None:
        if stats.noised_loss is not None:
            noised_losses.append(stats.noised_loss)
        eps: float | None = None
        # Epsilon so far costs ~0.2-1 s with PRV: refresh it every 15 s and at the end.
        if time.monotonic() - eps_last[0] >= 15.0 or stats.step == plan.total_steps:
            eps = trainer.epsilon()
            eps_last[0] = time.monotonic()
        metrics.update(
            step=stats.step,
            total=plan.total_steps,
            steps_per_second=1.0 / max(stats.seconds, 1e-9),
            noised_loss=stats.noised_loss,
            epsilon=eps,
        )
        if stats.step % cfg.checkpoint_interval_steps == 0 and stats.step < plan.total_steps:
            save_checkpoint(ckpt_dir, ckpt_key, trainer.state_dict(), binding)
        if progress is not None:
            progress(stats.step, plan.total_steps, eps)
        if eps is not None or stats.step % 10 == 0:
            log.info(
                "step",
                extra={
                    "step": stats.step,
                    "totalSteps": plan.total_steps,
                    "epoch": stats.epoch,
                    **(
                        {"noisedLoss": round(stats.noised_loss, 4)}
                        if stats.noised_loss is not None
                        else {}
                    ),
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
        return JobResult(
            summary=TrainerSummary(job=cfg.job_name, phase="Stopped", steps=trainer.step)
        )
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
        included=included,
        claimed_epsilon=epsilon,
        fmt=cfg.dataset.format,
        max_length=tc.max_seq_length,
        pad_id=pad_id,
        device=device,
        randomness=randomness,
    )
    adapter_path, adapter_sha = write_encrypted_adapter(model, Path(cfg.output_dir), out_key)
    summary = build_summary(
        job=cfg.job_name,
        plan=plan,
        privacy=pc,
        epsilon=epsilon,
        group_epsilon=trainer.group_epsilon() if plan.private else {},
        steps=trainer.step,
        epochs=tc.epochs,
        train_records=len(train_ex),
        held_out_records=len(held_ex),
        audit=audit_res,
        # documented as the path inside the output volume, not the in-pod mount path
        adapter_path=_join(cfg.output_subpath, adapter_path.name),
        adapter_sha256=adapter_sha,
        resumed_from_step=resumed_from,
        seconds=time.perf_counter() - t_start,
        shares=trainer.epsilon_shares(),
        noised_loss=noised_losses,
    )
    return JobResult(summary=summary, model=model)


class _Stop(Exception):
    pass


# ----------------------------------------------------------------------------- stages


def _load_keys(cfg: TrainerConfig) -> tuple[bytes, bytes, bytes]:
    """The dataset, output and per-job checkpoint keys (mounted read-only)."""
    try:
        data_key = load_key(cfg.dataset.key_file)
        out_key = load_key(cfg.output_key_file)
        ckpt_key = load_key(cfg.checkpoint_key_file)
    except (CryptoError, OSError) as exc:
        raise JobError("KeyError", f"cannot load a key: {exc}", ExitCode.KEY) from None
    return data_key, out_key, ckpt_key


def _verified_tokenizer(cfg: TrainerConfig) -> Any:
    """Check every model file against the pinned manifest, then load the tokenizer."""
    from .model_loading import ModelIntegrityError, load_tokenizer, verify_model_dir

    try:
        verify_model_dir(cfg.model_dir, cfg.model_manifest_sha256)
        tokenizer = load_tokenizer(cfg.model_dir)
    except ModelIntegrityError as exc:
        raise JobError("ModelIntegrityError", str(exc), ExitCode.MODEL) from None
    except OSError as exc:
        msg = f"cannot load the model: {type(exc).__name__}"
        raise JobError("ModelLoadError", msg, ExitCode.MODEL) from None
    return tokenizer


def _decrypt_records(cfg: TrainerConfig, data_key: bytes) -> tuple[list[Any], str]:
    """(records, dataset sha256): the digest checked first, then decrypted in memory."""
    from .data import DatasetFormatError, load_encrypted_dataset

    pc = cfg.privacy
    try:
        # The digest first: a swapped file is refused before any decryption (and the digest
        # is what a PrivacyBudget charges this job's epsilon to).
        dataset_sha = sha256_file(cfg.dataset.path)
        if cfg.dataset.sha256 and dataset_sha != cfg.dataset.sha256:
            raise JobError(
                "DatasetIntegrityError",
                f"dataset sha256 is {dataset_sha}, spec.dataset.sha256 says {cfg.dataset.sha256}",
                ExitCode.DATASET,
            )
        user_field = pc.user_field if pc.unit == "user" else None
        records = load_encrypted_dataset(cfg.dataset.path, data_key, cfg.dataset.format, user_field)
    except DatasetFormatError as exc:
        raise JobError("DatasetFormatError", str(exc), ExitCode.DATASET) from None
    except CryptoError as exc:
        raise JobError("DatasetDecryptError", str(exc), ExitCode.KEY) from None
    except FileNotFoundError:
        raise JobError(
            "DatasetNotFound", f"dataset {cfg.dataset.path} not found", ExitCode.DATASET
        ) from None
    return records, dataset_sha


def _with_canaries(
    cfg: TrainerConfig, tokenizer: Any, train_ex: list[Any], randomness: SecretRandomness
) -> tuple[list[tuple[int, str]], list[bool], list[Any]]:
    """Secret canaries, their inclusion coins, and the training examples with them."""
    from . import audit as audit_mod
    from .data import insert_canaries, make_canaries

    tc = cfg.training
    canaries = make_canaries(cfg.audit.canaries, randomness.rng("canary-secrets"))
    # One secret coin per canary (p = 1/2): included ones are trained on, the others are
    # the one-run audit's controls (Steinke et al. 2023).
    # Below MIN_LOWER_BOUND_CANARIES the bound cannot be nonzero: include them all.
    coins = randomness.rng("canary-coins")
    if len(canaries) >= audit_mod.MIN_LOWER_BOUND_CANARIES:
        included = [coins.random() < 0.5 for _ in canaries]
    else:
        included = [True] * len(canaries)
    if canaries:
        from .data import canary_record, tokenize_record

        fmt = cfg.dataset.format
        canary_ex = {
            i: tokenize_record(tokenizer, canary_record(i, s, fmt), tc.max_seq_length)
            for (i, s), inc in zip(canaries, included, strict=True)
            if inc
        }
        examples = insert_canaries(
            train_ex,
            list(canary_ex.items()),
            cfg.audit.canary_repetitions,
            randomness.rng("canary-positions"),
        )
    else:
        examples = list(train_ex)
    return canaries, included, examples
