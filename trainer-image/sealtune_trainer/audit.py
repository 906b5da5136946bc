"""Memorization audit: canary exposure and loss-threshold membership inference.

Canary exposure follows Carlini et al., "The Secret Sharer" (USENIX Security 2019):
the canary's log-perplexity is ranked among candidates of the same format (random
6-digit secrets), and exposure = log2(|R|) - log2(rank). Enumerating all 10^6 secrets is
needless; we rank against `CANDIDATES` random candidates plus the canary itself, so
|R| = CANDIDATES + 1 and exposure lies in [0, log2(|R|)] = [0, 10] bits. A model that never
saw the canary scores about 1.44 bits on average; a model that memorized it scores 10.

The one-run lower bound (Steinke, Nasr, Jagielski 2023) includes each canary by a secret
coin and scores it by base-model loss minus fine-tuned loss: a DP implementation whose
lower bound exceeds its claimed epsilon is broken, and the audit fails.

The membership headline is a calibrated score on the same canaries (base-model loss minus
fine-tuned loss; included canaries are members): TPR at 1% and 0.1% FPR with 95%
Clopper-Pearson intervals, and the calibrated AUC. `membership_auc` (loss-threshold
membership inference, ROC AUC between training and held-out records) stays as a tool for
benchmarks; the job does not release it, because
it is an un-noised statistic of private records.
"""

from __future__ import annotations

import math
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
from .randomness import SecretRandomness
from .training import collate, per_sample_loss

CANDIDATES = 1023
# With m canaries the one-run bound makes m/2 guesses; below 16 canaries (8 guesses) even
# all-correct guesses cannot reject epsilon = 1 at 95%, so smaller audits skip the bound
# and include every canary (exposure only).
MIN_LOWER_BOUND_CANARIES = 16
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
    epsilon_lower_bound: float | None = None
    guesses: int = 0
    correct_guesses: int = 0
    # calibrated membership score on canaries (included = members, excluded = non-members)
    membership_auc_calibrated: float | None = None
    tpr_at_fpr: dict[str, list[float]] = field(default_factory=dict)  # fpr -> [tpr, lo, hi]
    verdict: str = "passed"
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exposures"] = [round(x, 3) for x in self.exposures]
        for k in (
            "mean_exposure",
            "max_exposure",
            "membership_auc",
            "max_possible_exposure",
            "epsilon_lower_bound",
            "membership_auc_calibrated",
        ):
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
    randomness: SecretRandomness,
    candidates: int = CANDIDATES,
) -> float:
    """Exposure (bits) of one canary among `candidates` random secrets of its format."""
    rng = randomness.rng(f"exposure/{index}")
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
    randomness: SecretRandomness,
) -> tuple[float, int, int]:
    """Loss-threshold attack AUC on up to MIA_MAX_SAMPLES of each set."""
    rng = randomness.rng("mia-subsample")
    mem = list(members)
    non = list(non_members)
    if len(mem) > MIA_MAX_SAMPLES:
        mem = rng.sample(mem, MIA_MAX_SAMPLES)
    if len(non) > MIA_MAX_SAMPLES:
        non = rng.sample(non, MIA_MAX_SAMPLES)
    m_loss = example_losses(model, mem, pad_id, device)
    n_loss = example_losses(model, non, pad_id, device)
    return roc_auc([-x for x in m_loss], [-x for x in n_loss]), len(mem), len(non)


def one_run_epsilon_lower_bound(
    scores: Sequence[float], included: Sequence[bool], confidence: float = 0.95
) -> tuple[float, int, int]:
    """Steinke, Nasr & Jagielski (NeurIPS 2023), one training run, pure-DP form.

    Each of m canaries was included with an independent secret coin (p = 1/2). The
    auditor guesses "included" for the top quarter of scores and "excluded" for the bottom
    quarter; under (epsilon, 0)-DP the number of correct guesses among r is dominated by
    Binomial(r, e^eps / (1 + e^eps)). The bound is the largest epsilon that this many
    correct guesses rejects at `confidence`. It ignores delta (their Theorem 1 adds a
    delta term), so it is a slightly optimistic lower bound at tiny delta; an epsilon
    *below* it means the implementation is broken.
    Returns (epsilon lower bound, guesses, correct guesses).
    """
    from scipy.stats import binom

    m = len(scores)
    k = m // 4
    if k == 0:
        return 0.0, 0, 0
    order = sorted(range(m), key=lambda i: scores[i])
    guesses = [(i, True) for i in order[-k:]] + [(i, False) for i in order[:k]]
    correct = sum(1 for i, g in guesses if included[i] == g)
    r = len(guesses)

    def p_value(eps: float) -> float:
        p = math.exp(eps) / (1 + math.exp(eps))
        return float(binom.sf(correct - 1, r, p))  # P[X >= correct]

    alpha = 1 - confidence
    if p_value(0.0) > alpha:
        return 0.0, r, correct
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_value(mid) <= alpha:
            lo = mid
        else:
            hi = mid
    return lo, r, correct


def _clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def tpr_at_fpr(
    members: Sequence[float], non_members: Sequence[float], fpr: float
) -> tuple[float, float, float]:
    """True-positive rate at a false-positive rate (LiRA-style headline), with a 95%
    Clopper-Pearson interval. The threshold is the (1 - fpr) quantile of non-member scores;
    with fewer than 1/fpr non-members the threshold is their maximum (FPR 0 on this sample),
    which the interval's width makes visible."""
    ranked = sorted(non_members, reverse=True)
    allowed = int(fpr * len(ranked))
    threshold = ranked[allowed] if allowed < len(ranked) else float("-inf")
    hits = sum(1 for s in members if s > threshold)
    lo, hi = _clopper_pearson(hits, len(members))
    return hits / len(members), lo, hi


@torch.no_grad()
def canary_scores(
    model: Any,
    tokenizer: Any,
    canaries: Sequence[tuple[int, str]],
    fmt: DatasetFormat,
    *,
    max_length: int,
    pad_id: int,
    device: str,
) -> list[float]:
    """Base-model loss minus fine-tuned loss of each canary's answer (higher: memorized).

    Calibrating by the frozen base model removes how "easy" each secret is a priori.
    """
    from .data import tokenize_record

    exs = [tokenize_record(tokenizer, canary_record(i, s, fmt), max_length) for i, s in canaries]
    model.eval()
    tuned = example_losses(model, exs, pad_id, device)
    with model.disable_adapter():
        base = example_losses(model, exs, pad_id, device)
    return [b - f for b, f in zip(base, tuned, strict=True)]


def run_audit(
    model: Any,
    tokenizer: Any,
    cfg: AuditConfig,
    *,
    canaries: Sequence[tuple[int, str]],
    included: Sequence[bool],
    claimed_epsilon: float,
    fmt: DatasetFormat,
    max_length: int,
    pad_id: int,
    device: str,
    randomness: SecretRandomness,
) -> AuditResult:
    """Canary exposure (memorization) and a one-run epsilon lower bound (a wrong epsilon).

    Only canaries enter the audit: they are secrets the trainer made up, not private data,
    and the model is the DP output, so every number here is post-processing and free to
    release. (The membership AUC on private held-out records was not: it is gone.)
    """
    res = AuditResult(
        canaries=len(canaries),
        canary_repetitions=cfg.canary_repetitions if canaries else 0,
        max_canary_exposure=cfg.max_canary_exposure,
        membership_auc_threshold=cfg.membership_auc_threshold,
    )
    inserted = [c for c, inc in zip(canaries, included, strict=True) if inc]
    for index, secret in inserted:
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
                randomness=randomness,
            )
        )
    if res.exposures:
        res.mean_exposure = sum(res.exposures) / len(res.exposures)
        res.max_exposure = max(res.exposures)
        if res.mean_exposure > cfg.max_canary_exposure:
            res.reasons.append(
                f"mean canary exposure {res.mean_exposure:.2f} bits > {cfg.max_canary_exposure}"
            )
    if len(canaries) >= MIN_LOWER_BOUND_CANARIES:
        scores = canary_scores(
            model, tokenizer, canaries, fmt, max_length=max_length, pad_id=pad_id, device=device
        )
        res.epsilon_lower_bound, res.guesses, res.correct_guesses = one_run_epsilon_lower_bound(
            scores, included
        )
        members = [s for s, inc in zip(scores, included, strict=True) if inc]
        non_members = [s for s, inc in zip(scores, included, strict=True) if not inc]
        if members and non_members:
            res.membership_auc_calibrated = roc_auc(members, non_members)
            for fpr in (0.01, 0.001):
                res.tpr_at_fpr[str(fpr)] = list(tpr_at_fpr(members, non_members, fpr))
        if math.isfinite(claimed_epsilon) and res.epsilon_lower_bound > claimed_epsilon:
            res.reasons.append(
                f"empirical epsilon lower bound {res.epsilon_lower_bound:.2f} exceeds the "
                f"claimed epsilon {claimed_epsilon:.2f}: the DP implementation is broken"
            )
    res.verdict = "failed" if res.reasons else "passed"
    return res
