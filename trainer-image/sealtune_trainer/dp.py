"""DP-SGD for LoRA: per-sample gradients, Opacus' clipping/noise, and accounting.

Why a custom per-sample path: Opacus' GradSampleModule hooks every trainable module,
keeps the activations in forward hooks, and still lets autograd compute the ordinary
(summed) weight gradient it then throws away. For LoRA the only trainable layers are
the `lora_A`/`lora_B` linears, whose per-sample gradient is one batched matmul of the
saved input and the output gradient: `grad_sample[b] = sum_t g[b,t]^T x[b,t]`.
`LoRAPerSampleLinear` computes exactly that in its autograd backward *instead of* the
summed weight gradient, so the DP backward costs what the non-private one does. The
result lands in `param.grad_sample`, where Opacus' `DPOptimizer` clips it per sample,
sums, adds Gaussian noise and scales; Opacus' accountants (PRV by default, RDP
selectable) and its noise calibration are used unchanged.

Because a silently wrong per-sample gradient still lets the loss fall and epsilon be
counted (opacus#820), `tests/trainer/test_dp_step.py` checks one step of this path (and
of Opacus' own hooks) against a by-hand clipped mean of per-sample gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sealtune_api.trainer_config import PrivacyConfig

GradSampleMode = str  # "lora" (ours, default) | "hooks" | "ghost" (Opacus)


class _PerSampleLinearFn(torch.autograd.Function):
    """y = x W^T; backward yields grad_x and writes per-sample dL/dW to W.grad_sample."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            b = x.shape[0]
            gs = torch.bmm(
                grad_out.reshape(b, -1, grad_out.shape[-1]).transpose(1, 2),
                x.reshape(b, -1, x.shape[-1]),
            ).to(weight.dtype)
            prev = getattr(weight, "grad_sample", None)
            weight.grad_sample = gs if prev is None else prev + gs
        return grad_x, None


class LoRAPerSampleLinear(nn.Linear):
    """An `nn.Linear` (no bias) whose backward produces per-sample weight gradients only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.requires_grad and torch.is_grad_enabled():
            return _PerSampleLinearFn.apply(x, self.weight)
        return F.linear(x, self.weight, self.bias)


def enable_lora_per_sample_grads(model: nn.Module) -> list[nn.Parameter]:
    """Switch every trainable LoRA linear to the per-sample path; return their weights.

    The module class is swapped in place, so state-dict keys, PEFT's adapter saving and
    the module tree stay exactly as they were.
    """
    params: list[nn.Parameter] = []
    for name, module in model.named_modules():
        if not (".lora_A." in name or ".lora_B." in name) or type(module) is not nn.Linear:
            continue
        if not module.weight.requires_grad:
            continue
        if module.bias is not None:
            raise ValueError(f"LoRA layer {name} has a bias; the per-sample path expects none")
        module.__class__ = LoRAPerSampleLinear
        params.append(module.weight)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if {id(p) for p in trainable} != {id(p) for p in params}:
        raise ValueError(
            "DP training needs every trainable parameter to be a LoRA matrix "
            "(embeddings and heads must be frozen)"
        )
    return params


def make_accountant(kind: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if kind == "prv":
        return PRVAccountant()
    if kind == "rdp":
        return RDPAccountant()
    raise ValueError(f"unknown accountant {kind!r}")


def solve_noise_multiplier(privacy: PrivacyConfig, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier whose epsilon after `steps` is at most the target."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=privacy.target_epsilon,
            target_delta=privacy.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=privacy.accountant,
            epsilon_tolerance=0.01,
        )
    )


def composed_epsilon(kind: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of several Poisson-subsampled Gaussian mechanisms composed (one accountant)."""
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    acc = make_accountant(kind)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def joint_noise_multiplier(sigma: float, loss_sigma: float) -> float:
    """The noise multiplier of one step that releases the noised gradient sum *and* the
    noised loss sum of the same Poisson sample: a two-coordinate Gaussian mechanism whose
    coordinates have sensitivities C and lossClip, i.e. sigma_eff^-2 = sigma^-2 + sigma_l^-2.
    (Accounting the loss as a separately sampled mechanism would under-count: both read the
    same batch.)"""
    return float((sigma**-2 + loss_sigma**-2) ** -0.5)


def release_history(
    sigma: float, loss_sigma: float | None, sample_rate: float, steps: int, releases: int
) -> list[tuple[float, float, int]]:
    """Accountant history of `steps` DP-SGD steps, `releases` of which also released the
    noised loss: plain steps at sigma, release steps at the joint noise multiplier."""
    if loss_sigma is None or releases <= 0:
        return [(sigma, sample_rate, steps)]
    joint = joint_noise_multiplier(sigma, loss_sigma)
    return [(sigma, sample_rate, steps - releases), (joint, sample_rate, releases)]


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """Group privacy: (eps, delta)-DP per unit gives (k eps, k e^((k-1) eps) delta) for k
    units (delta capped at 1, computed in logs so a large epsilon does not overflow)."""
    log_delta = math.log(k) + (k - 1) * epsilon + math.log(delta)
    return k * epsilon, math.exp(min(log_delta, 0.0))


def loss_releases(total_steps: int, interval: int) -> int:
    """How many noised losses a run of `total_steps` releases (every `interval`, and last)."""
    return total_steps // interval + (1 if total_steps % interval else 0)


def solve_with_loss_release(
    privacy: PrivacyConfig, sample_rate: float, steps: int, releases: int
) -> tuple[float, float]:
    """Noise multipliers (DP-SGD, loss release) so that both together spend the target.

    The loss noise is tied to the SGD noise by a factor chosen so the releases cost about
    `lossBudgetShare` of the budget (Gaussian cost ~ count / sigma^2); then one bisection on
    the SGD sigma makes the *composed* epsilon meet the target (tolerance 1%).
    """
    share = privacy.loss_budget_share
    ratio = math.sqrt(releases * (1 - share) / (share * steps))
    target = privacy.target_epsilon
    seen: dict[float, float] = {}

    def eps(sigma: float) -> float:
        if sigma not in seen:
            hist = release_history(sigma, sigma * ratio, sample_rate, steps, releases)
            seen[sigma] = composed_epsilon(privacy.accountant, hist, privacy.delta)
        return seen[sigma]

    # SGD alone needs sigma0; adding a mechanism of cost share s needs ~sigma0/sqrt(1-s).
    lo = solve_noise_multiplier(privacy, sample_rate, steps)
    hi = lo / math.sqrt(1 - share) * 1.05
    while eps(hi) > target:
        lo, hi = hi, hi * 1.2
    while target - eps(hi) > 0.01 * target and hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        if eps(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi, hi * ratio


def epsilon_of(accountant: Any, delta: float) -> float:
    """Epsilon spent so far (0.0 before the first step)."""
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta))


def make_dp_optimizer(
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    generator: torch.Generator | None,
) -> Any:
    """Opacus' DPOptimizer over per-sample grads: clip each sample to C, sum, add N(0, s^2 C^2),
    divide by the expected (logical) batch size."""
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
        # Sum of four half-scale Gaussians: robust to floating-point attacks on the noise
        # (Mironov 2012; Holohan et al. 2021). The generator is seeded from the job secret.
        secure_mode=True,
    )


class PerSampleGradientError(RuntimeError):
    """A per-sample gradient does not have one row per sample: clipping would be wrong."""


def check_grad_samples(params: list[nn.Parameter], batch: int) -> None:
    """Fail closed unless every trainable parameter has exactly `batch` per-sample rows.

    If a hook accumulated twice, or a layer was missed, Opacus would clip the wrong
    quantity and the reported epsilon would not hold; stopping is the only safe answer.
    """
    for p in params:
        gs = getattr(p, "grad_sample", None)
        if gs is None or gs.shape[0] != batch or tuple(gs.shape[1:]) != tuple(p.shape):
            shape = None if gs is None else tuple(gs.shape)
            raise PerSampleGradientError(
                f"per-sample gradient of shape {shape} for a parameter of shape "
                f"{tuple(p.shape)} and a micro-batch of {batch}: refusing to train"
            )


def sum_grad_samples_by_unit(params: list[nn.Parameter], owner: list[int], units: int) -> None:
    """Replace per-record gradient rows by per-unit sums (user-level DP).

    `owner[r]` is the unit of row r. Opacus then clips each unit's *summed* gradient to C,
    so one user's influence on a step is bounded by C however many records they have.
    """
    for p in params:
        gs = p.grad_sample  # type: ignore[attr-defined]
        index = torch.tensor(owner, device=gs.device)
        summed = torch.zeros((units, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
        p.grad_sample = summed.index_add_(0, index, gs)  # type: ignore[attr-defined]


def clear_grad_samples(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad_sample = None  # type: ignore[attr-defined]
