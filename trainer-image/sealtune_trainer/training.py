"""The training loop: DP-SGD (Poisson sampling, virtual batches) or plain LoRA fine-tuning.

Every source of randomness has its own generator. The two that protect privacy, Poisson
sampling and DP noise, are re-seeded every step from the job's secret
(`randomness.SecretRandomness`: labels `poisson/<step>` and `noise/<step>`), never from
`training.seed`; dropout uses the global torch RNG. Generator states are part of
`Trainer.state_dict()` (kept only in the encrypted checkpoint), together with the
optimizer, scheduler, step counter and accountant history, so a resumed run replays the
very same sample draws, noise and updates as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sealtune_api.trainer_config import PrivacyConfig, TrainingConfig

from . import dp
from .data import IGNORE_INDEX, Example
from .randomness import SecretRandomness


@dataclass(frozen=True)
class TrainPlan:
    """Step arithmetic fixed before training (and checked again on resume)."""

    n_train: int
    logical_batch: int
    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    sample_rate: float
    noise_multiplier: float | None  # None: no DP
    loss_noise_multiplier: float | None = None  # None: no loss release
    loss_release_interval: int = 0
    loss_clip: float = 0.0

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None


def make_plan(n_train: int, training: TrainingConfig, privacy: PrivacyConfig) -> TrainPlan:
    """Steps per epoch = N / batch (as Opacus' Poisson loader); noise solved for all steps."""
    if n_train < 1:
        raise ValueError("no training records")
    logical = min(training.batch_size, n_train)
    sample_rate = logical / n_train
    steps_per_epoch = max(1, round(1 / sample_rate))
    total = steps_per_epoch * training.epochs
    noise: float | None = None
    loss_noise: float | None = None
    if privacy.enabled and privacy.release_loss:
        releases = dp.loss_releases(total, privacy.loss_release_interval)
        noise, loss_noise = dp.solve_with_loss_release(privacy, sample_rate, total, releases)
    elif privacy.enabled:
        noise = dp.solve_noise_multiplier(privacy, sample_rate, total)
    return TrainPlan(
        n_train=n_train,
        logical_batch=logical,
        micro_batch=min(training.micro_batch_size, logical),
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        sample_rate=sample_rate,
        noise_multiplier=noise,
        loss_noise_multiplier=loss_noise,
        loss_release_interval=privacy.loss_release_interval if loss_noise else 0,
        loss_clip=privacy.loss_clip if loss_noise else 0.0,
    )


@dataclass
class StepStats:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens: int
    seconds: float
    samples: int
    noised_loss: float | None = None  # DP release (only at release steps); the rest stays here


@dataclass
class Collated:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def collate(examples: Sequence[Example], pad_id: int, device: str | torch.device) -> Collated:
    """Right-pad to the longest example of the micro-batch."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return Collated(ids.to(device), mask.to(device), labels.to(device))


def per_sample_loss(model: nn.Module, batch: Collated) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's label tokens: shape [B]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = batch.labels[:, 1:]
    tok = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    count = (shift_labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return tok.sum(dim=1) / count


class Trainer:
    """Owns model, optimizer, scheduler, generators and (with DP) the accountant."""

    def __init__(
        self,
        model: nn.Module,
        examples: Sequence[Example],
        training: TrainingConfig,
        privacy: PrivacyConfig,
        plan: TrainPlan,
        *,
        pad_id: int,
        randomness: SecretRandomness,
        device: str = "cpu",
        units: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """`units`: with user-level DP, example indices grouped per user; the plan then
        counts units (users), Poisson sampling draws units, and each unit's summed
        gradient is clipped once."""
        self.model = model
        self.randomness = randomness
        self.units = [list(u) for u in units] if units is not None else None
        if self.units is not None and len(self.units) != plan.n_train:
            raise ValueError("the plan must count privacy units when units are given")
        self.examples = list(examples)
        self.training = training
        self.privacy = privacy
        self.plan = plan
        self.pad_id = pad_id
        self.device = device
        self.step = 0
        self.last_loss = float("nan")
        self.params = [p for p in model.parameters() if p.requires_grad]
        base = torch.optim.AdamW(self.params, lr=training.learning_rate, weight_decay=0.0)
        warmup = max(1, plan.total_steps // 10)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            base, lambda s: min(1.0, (s + 1) / warmup)
        )
        self.base_optimizer = base
        # Secret, per-step streams (see the module docstring); never the public seed.
        self.sample_gen = randomness.generator("poisson/0")
        self.noise_gen = randomness.generator("noise/0", device)
        self.accountant: Any = None
        self._eps_key: tuple[Any, ...] | None = None
        self._eps_value = 0.0
        self.optimizer: Any = base
        if plan.private:
            dp.enable_lora_per_sample_grads(model)
            assert plan.noise_multiplier is not None
            self.optimizer = dp.make_dp_optimizer(
                base,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=privacy.max_grad_norm,
                expected_batch_size=plan.logical_batch,
                generator=self.noise_gen,
            )
            self.accountant = dp.make_accountant(privacy.accountant)
            self.optimizer.attach_step_hook(
                self.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate)
            )

    # ------------------------------------------------------------ sampling

    def _draw_indices(self) -> list[int]:
        """Indices of the next logical batch (Poisson with DP, shuffled epochs without)."""
        if self.plan.private:
            # Opacus' UniformWithReplacementSampler, one step: each record independently
            # with probability q, from our own saved generator.
            mask = torch.rand(self.plan.n_train, generator=self.sample_gen) < self.plan.sample_rate
            return [int(i) for i in mask.nonzero(as_tuple=False).reshape(-1).tolist()]
        epoch, pos = divmod(self.step, self.plan.steps_per_epoch)
        gen = torch.Generator().manual_seed(self.training.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.plan.n_train, generator=gen).tolist()
        b = self.plan.logical_batch
        chunk = perm[pos * b : (pos + 1) * b]
        return chunk if chunk else perm[:b]

    # ------------------------------------------------------------ one step

    def _unit_chunks(self, drawn: list[int]) -> list[list[list[int]]]:
        """Micro-batches of whole units: a unit's records are never split across chunks
        (its gradient is clipped once, on the sum), chunks hold ~microBatchSize records."""
        if self.units is None:
            micro = self.plan.micro_batch
            return [[[i] for i in drawn[k : k + micro]] for k in range(0, len(drawn), micro)]
        chunks: list[list[list[int]]] = []
        current: list[list[int]] = []
        size = 0
        for u in drawn:
            records = self.units[u]
            if current and size + len(records) > self.plan.micro_batch:
                chunks.append(current)
                current, size = [], 0
            current.append(records)
            size += len(records)
        if current:
            chunks.append(current)
        return chunks

    def train_step(self) -> StepStats:
        t0 = time.perf_counter()
        if self.plan.private:
            self.randomness.reseed(self.sample_gen, f"poisson/{self.step}")
            self.randomness.reseed(self.noise_gen, f"noise/{self.step}")
        drawn = self._draw_indices()
        unit_chunks = self._unit_chunks(drawn) if self.plan.private else []
        indices = [i for chunk in unit_chunks for unit in chunk for i in unit] or drawn
        micro = self.plan.micro_batch
        chunks = [indices[i : i + micro] for i in range(0, len(indices), micro)]
        self.model.train()
        loss_sum = 0.0
        clipped_loss_sum = 0.0  # per unit clipped to lossClip: the noised release's input
        tokens = 0
        if self.plan.private:
            if not chunks:  # an empty Poisson draw: the update is pure noise
                for p in self.params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for ci, units in enumerate(unit_chunks):
                chunk = [i for unit in units for i in unit]
                batch = collate([self.examples[i] for i in chunk], self.pad_id, self.device)
                losses = per_sample_loss(self.model, batch)
                losses.sum().backward()
                dp.check_grad_samples(self.params, len(chunk))
                owner = [pos for pos, unit in enumerate(units) for _ in unit]
                if self.units is not None:
                    dp.sum_grad_samples_by_unit(self.params, owner, len(units))
                per_unit = torch.zeros(len(units), dtype=torch.float64).index_add_(
                    0, torch.tensor(owner), losses.detach().double().cpu()
                )
                clipped_loss_sum += float(per_unit.clamp(0.0, self.plan.loss_clip or 0.0).sum())
                loss_sum += float(losses.detach().sum())
                tokens += int(batch.attention_mask.sum())
                if ci < len(unit_chunks) - 1:
                    self.optimizer.signal_skip_step(do_skip=True)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        else:
            scale = 1.0 / max(1, len(indices))
            for chunk in chunks:
                batch = collate([self.examples[i] for i in chunk], self.pad_id, self.device)
                losses = per_sample_loss(self.model, batch)
                (losses.sum() * scale).backward()
                loss_sum += float(losses.detach().sum())
                tokens += int(batch.attention_mask.sum())
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.last_loss = loss_sum / len(indices) if indices else self.last_loss
        noised = self._release_loss(clipped_loss_sum) if self.releases_loss_now() else None
        return StepStats(
            step=self.step,
            total_steps=self.plan.total_steps,
            epoch=(self.step - 1) // self.plan.steps_per_epoch,
            loss=self.last_loss,
            tokens=tokens,
            seconds=time.perf_counter() - t0,
            samples=len(indices),
            noised_loss=noised,
        )

    # ------------------------------------------------------------ noised loss release

    def releases_loss_now(self) -> bool:
        """After step `self.step`: every `lossReleaseInterval` steps, and the last step."""
        every = self.plan.loss_release_interval
        if not every or self.plan.loss_noise_multiplier is None:
            return False
        return self.step % every == 0 or self.step == self.plan.total_steps

    def loss_releases_done(self) -> int:
        every = self.plan.loss_release_interval
        if not every or self.plan.loss_noise_multiplier is None:
            return 0
        return dp.loss_releases(self.step, every)

    def _release_loss(self, clipped_sum: float) -> float:
        """The Gaussian mechanism on the sum of clipped per-unit losses (sensitivity
        lossClip under add/remove), divided by the expected batch, like DP-SGD's update."""
        assert self.plan.loss_noise_multiplier is not None
        gen = self.randomness.generator(f"loss-noise/{self.step}")
        std = self.plan.loss_noise_multiplier * self.plan.loss_clip
        # secure-mode style: mean of four draws at twice the std (Holohan et al. 2021)
        draws = torch.normal(0.0, 2 * std, size=(4,), generator=gen, dtype=torch.float64)
        return (clipped_sum + float(draws.sum() / 4)) / self.plan.logical_batch

    def _history(self) -> list[tuple[float, float, int]]:
        """The accountant's DP-SGD steps, with release steps at the joint noise multiplier."""
        steps = sum(int(h[2]) for h in self.accountant.history)
        assert self.plan.noise_multiplier is not None
        return dp.release_history(
            self.plan.noise_multiplier,
            self.plan.loss_noise_multiplier,
            self.plan.sample_rate,
            steps,
            min(self.loss_releases_done(), steps),
        )

    def epsilon(self) -> float:
        """Epsilon spent so far by DP-SGD and the loss releases together (memoized: PRV
        costs ~0.2-1 s)."""
        if not self.plan.private:
            return math.inf
        key = tuple(self._history())
        if key != self._eps_key:
            self._eps_value = dp.composed_epsilon(
                self.privacy.accountant, list(key), self.privacy.delta
            )
            self._eps_key = key
        return self._eps_value

    def epsilon_shares(self) -> dict[str, float]:
        """Each mechanism's epsilon alone (the ledger's shares); the total is their joint
        accounting, which is at most their sum."""
        if not self.plan.private:
            return {}
        assert self.plan.noise_multiplier is not None
        q, steps = self.plan.sample_rate, sum(int(h[2]) for h in self.accountant.history)
        kind, delta = self.privacy.accountant, self.privacy.delta
        out = {
            "adapter": dp.composed_epsilon(kind, [(self.plan.noise_multiplier, q, steps)], delta)
        }
        if self.plan.loss_noise_multiplier is not None:
            releases = [(self.plan.loss_noise_multiplier, q, self.loss_releases_done())]
            out["trainingLoss"] = dp.composed_epsilon(kind, releases, delta)
        return out

    def group_epsilon(self, sizes: tuple[int, ...] = (2, 5, 10)) -> dict[str, float]:
        """Epsilon for a group of k records (e.g. one patient's k notes), record-level DP.

        Standard group privacy: (epsilon, delta)-DP for one record gives
        (k epsilon, k e^((k-1) epsilon) delta)-DP for k records. The delta grows too; this
        is why `privacy.unit: user` (one patient = one unit) is the right tool for
        multi-record subjects. Reported so nobody mistakes a record for a person.
        """
        eps = self.epsilon()
        return {str(k): dp.group_privacy(eps, self.privacy.delta, k)[0] for k in sizes}

    def budget_left(self, check_epsilon: bool = False) -> bool:
        """True while planned steps remain and (with DP) epsilon is below the target.

        The noise multiplier is solved so that the last planned step spends the budget;
        the (costly, for PRV) epsilon check is a guard that stops a run early should the
        accountant ever report the target reached before that.
        """
        if self.step >= self.plan.total_steps:
            return False
        if check_epsilon and self.plan.private:
            return self.epsilon() < self.privacy.target_epsilon
        return True

    def run(self, on_step: Callable[[StepStats], None] | None = None) -> None:
        check_every = max(10, self.plan.total_steps // 10)
        while self.budget_left(check_epsilon=self.step > 0 and self.step % check_every == 0):
            stats = self.train_step()
            if on_step is not None:
                on_step(stats)

    # ------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {
            "step": self.step,
            "last_loss": self.last_loss,
            "adapter": {
                k: v.detach().cpu().clone()
                for k, v in get_peft_model_state_dict(self.model).items()
            },
            "optimizer": self.base_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sample_gen": self.sample_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "accountant_history": list(self.accountant.history) if self.accountant else [],
            "plan": plan_fingerprint(self.plan),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        if state["plan"] != plan_fingerprint(self.plan):
            raise ValueError("checkpoint was written for a different training plan")
        set_peft_model_state_dict(self.model, state["adapter"])
        self.base_optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sample_gen.set_state(state["sample_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.accountant is not None:
            self.accountant.history = [tuple(h) for h in state["accountant_history"]]
        self.step = int(state["step"])
        self.last_loss = float(state["last_loss"])


def plan_fingerprint(plan: TrainPlan) -> list[Any]:
    return [
        plan.n_train,
        plan.logical_batch,
        plan.micro_batch,
        plan.steps_per_epoch,
        plan.total_steps,
        plan.sample_rate,
        plan.noise_multiplier,
        plan.loss_noise_multiplier,
        plan.loss_release_interval,
    ]


@dataclass
class LossCurve:
    """Losses per step, kept small for the summary (first, last, and a coarse curve)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)
