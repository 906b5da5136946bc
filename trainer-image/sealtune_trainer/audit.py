"""Memorization audit: canary exposure and loss-threshold membership inference.

Canary exposure follows Carlini et al., "The Secret Sharer" (USENIX Security 2019):
the canary's log-perplexity is ranked among candidates of the same format (random
6-digit secrets), and exposure = log2(|R|) - log2(rank). Enumerating all 10^6 secrets is
needless; we rank against `CANDIDATES` random candidates plus the canary itself, so
|R| = CANDIDATES + 1 and exposure lies in [0, log2(|R|)] = [0, 10] bits. A model that never
saw the canary scores about 1.44 bits on average; a model that memorized it scores 10.

Membership inference uses the loss as the score (lower loss: "member") and reports the
ROC AUC between training records (members) and held-out records (non-members):
0.5 means the adversary learns nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sealtune_api.trainer_config import AuditConfig

from .data import (
    DatasetFormat,
    Example,
    canary_record,
    random_secret,
    tokenize_variants,
)
from .training import collate, per_sample_loss

CANDIDATES = 1023
MIA_MAX_SAMPLES = 256


@dataclass
class AuditResult:
    canaries: int = 0
    canary_repetitions: int = 0
    exposures: list[float] = field(default_factory=list)
    mean_exposure: float | None = None
    max_exposure: float | None = None
    max_possible_exposure: float = math.log2(CANDIDATES + 1)
    membership_auc: float | None = None
    members: int = 0
    non_members: int = 0
    max_canary_exposure: float = 0.0
    membership_auc_threshold: float = 0.0
    verdict: str = "passed"
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exposures"] = [round(x, 3) for x in self.exposures]
        for k in ("mean_exposure", "max_exposure", "membership_auc", "max_possible_exposure"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        return d


@torch.no_grad()
def example_losses(
    model: Any, examples: Sequence[Example], pad_id: int, device: str, batch_size: int = 32
) -> list[float]:
    """Per-example mean token loss (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id, device)
        out.extend(float(x) for x in per_sample_loss(model, batch).cpu())
    if was_training:
        model.train()
    return out


@torch.no_grad()
def _total_nll(
    model: Any, examples: Sequence[Example], pad_id: int, device: str, batch_size: int = 64
) -> list[float]:
    """Sum of token NLLs over the label tokens (the log-perplexity of the answer)."""
    out: list[float] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk, pad_id, device)
        losses = per_sample_loss(model, batch).cpu()
        counts = [sum(1 for lab in e.labels[1:] if lab != -100) for e in chunk]
        out.extend(float(loss) * c for loss, c in zip(losses, counts, strict=True))
    return out


def canary_exposure(
    model: Any,
    tokenizer: Any,
    index: int,
    secret: str,
    fmt: DatasetFormat,
    *,
    max_length: int,
    pad_id: int,
    device: str,
    seed: int,
    candidates: int = CANDIDATES,
) -> float:
    """Exposure (bits) of one canary among `candidates` random secrets of its format."""
    rng = random.Random(f"sealtune-exposure-{seed}-{index}")
    others: list[str] = []
    seen = {secret}
    while len(others) < candidates:
        cand = random_secret(rng)
        if cand not in seen:
            seen.add(cand)
            others.append(cand)
    exs = tokenize_variants(
        tokenizer, canary_record(index, secret, fmt), secret, [secret, *others], max_length
    )
    model.eval()
    nll = _total_nll(model, exs, pad_id, device)
    rank = 1 + sum(1 for x in nll[1:] if x < nll[0])
    return math.log2(candidates + 1) - math.log2(rank)


def roc_auc(member_scores: Sequence[float], non_member_scores: Sequence[float]) -> float:
    """P(member score > non-member score) + 0.5 P(tie): the Mann-Whitney AUC."""
    if not member_scores or not non_member_scores:
        raise ValueError("AUC needs members and non-members")
    pairs = [(s, 1) for s in member_scores] + [(s, 0) for s in non_member_scores]
    pairs.sort(key=lambda x: x[0])
    # Average ranks with ties.
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += avg * sum(1 for k in range(i, j + 1) if pairs[k][1] == 1)
        i = j + 1
    m, n = len(member_scores), len(non_member_scores)
    return (rank_sum - m * (m + 1) / 2) / (m * n)


def membership_auc(
    model: Any,
    members: Sequence[Example],
    non_members: Sequence[Example],
    *,
    pad_id: int,
    device: str,
    seed: int,
) -> tuple[float, int, int]:
    """Loss-threshold attack AUC on up to MIA_MAX_SAMPLES of each set."""
    rng = random.Random(f"sealtune-mia-{seed}")
    mem = list(members)
    non = list(non_members)
    if len(mem) > MIA_MAX_SAMPLES:
        mem = rng.sample(mem, MIA_MAX_SAMPLES)
    if len(non) > MIA_MAX_SAMPLES:
        non = rng.sample(non, MIA_MAX_SAMPLES)
    m_loss = example_losses(model, mem, pad_id, device)
    n_loss = example_losses(model, non, pad_id, device)
    return roc_auc([-x for x in m_loss], [-x for x in n_loss]), len(mem), len(non)


def run_audit(
    model: Any,
    tokenizer: Any,
    cfg: AuditConfig,
    *,
    canaries: Sequence[tuple[int, str]],
    members: Sequence[Example],
    non_members: Sequence[Example],
    fmt: DatasetFormat,
    max_length: int,
    pad_id: int,
    device: str,
    seed: int,
) -> AuditResult:
    """Measure both, compare with the spec's thresholds, set the verdict."""
    res = AuditResult(
        canaries=len(canaries),
        canary_repetitions=cfg.canary_repetitions if canaries else 0,
        max_canary_exposure=cfg.max_canary_exposure,
        membership_auc_threshold=cfg.membership_auc_threshold,
    )
    for index, secret in canaries:
        res.exposures.append(
            canary_exposure(
                model,
                tokenizer,
                index,
                secret,
                fmt,
                max_length=max_length,
                pad_id=pad_id,
                device=device,
                seed=seed,
            )
        )
    if res.exposures:
        res.mean_exposure = sum(res.exposures) / len(res.exposures)
        res.max_exposure = max(res.exposures)
        if res.mean_exposure > cfg.max_canary_exposure:
            res.reasons.append(
                f"mean canary exposure {res.mean_exposure:.2f} bits > {cfg.max_canary_exposure}"
            )
    if members and non_members:
        auc, res.members, res.non_members = membership_auc(
            model, members, non_members, pad_id=pad_id, device=device, seed=seed
        )
        res.membership_auc = auc
        if auc > cfg.membership_auc_threshold:
            res.reasons.append(
                f"membership-inference AUC {auc:.3f} > {cfg.membership_auc_threshold}"
            )
    else:
        res.reasons.append("membership inference not measured: no held-out records")
    # Fail closed: an audit that could not be measured does not pass.
    res.verdict = "failed" if res.reasons else "passed"
    return res
