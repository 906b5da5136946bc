"""One DP step against a by-hand computation (the opacus#820 trap).

By hand: per-sample gradients from separate backward passes on the unmodified PEFT model,
each clipped to C over all LoRA parameters jointly, summed, divided by the expected batch
size; noise multiplier 0. The shipped path (per-sample LoRA grads + Opacus DPOptimizer)
and Opacus' own GradSampleModule hooks must both reproduce it, including with a logical
batch split into virtual (physical) batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sealtune_api.trainer_config import TrainingConfig
from sealtune_trainer import dp
from sealtune_trainer.data import Example
from sealtune_trainer.model_loading import add_lora, load_base_model
from sealtune_trainer.training import collate, per_sample_loss

C = 0.05
B = 6


def _examples() -> list[Example]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(B):
        n = int(torch.randint(8, 30, (1,), generator=g))
        ids = torch.randint(4, 500, (n,), generator=g).tolist()
        out.append(Example(ids, [-100] * 3 + ids[3:]))
    return out


def _model(tiny_model: Path) -> Any:
    tc = TrainingConfig(rank=4, dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj"])
    torch.manual_seed(0)
    model = add_lora(load_base_model(tiny_model, tc, "cpu"), tc)
    with torch.no_grad():  # non-zero B so that lora_A receives gradient too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def _by_hand(tiny_model: Path, exs: list[Example]) -> tuple[list[torch.Tensor], list[float]]:
    model = _model(tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for e in exs:
        loss = per_sample_loss(model, collate([e], 0, "cpu")).sum()
        grads = torch.autograd.grad(loss, params)
        norm = float(torch.stack([(g.double() ** 2).sum() for g in grads]).sum().sqrt())
        norms.append(norm)
        factor = min(1.0, C / (norm + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return [t / B for t in total], norms


@pytest.mark.parametrize("mode", ["lora", "hooks"])
@pytest.mark.parametrize("micro", [B, 4])
def test_dp_step_matches_by_hand(tiny_model: Path, mode: str, micro: int) -> None:
    """The shipped path and Opacus hooks, with and without virtual batches."""
    exs = _examples()
    expected, norms = _by_hand(tiny_model, exs)
    assert max(norms) > C  # clipping is really exercised
    model = _model(tiny_model)
    fwd: Any = model
    if mode == "lora":
        params = dp.enable_lora_per_sample_grads(model)
    else:
        from opacus import GradSampleModule

        fwd = GradSampleModule(model, loss_reduction="sum")
        params = [p for p in model.parameters() if p.requires_grad]
    opt = dp.make_dp_optimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=B,
        generator=None,
    )
    chunks = [exs[i : i + micro] for i in range(0, B, micro)]
    for i, chunk in enumerate(chunks):
        per_sample_loss(fwd, collate(chunk, 0, "cpu")).sum().backward()
        if i < len(chunks) - 1:
            opt.signal_skip_step(do_skip=True)
        opt.step()
        if i < len(chunks) - 1:
            opt.zero_grad(set_to_none=True)
    scale = max(float(t.abs().max()) for t in expected)
    assert scale > 0
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-7 * scale + 1e-9)


def test_noise_has_calibrated_std(tiny_model: Path) -> None:
    """With a zero loss the update is pure noise of std sigma*C/B per coordinate."""
    model = _model(tiny_model)
    params = dp.enable_lora_per_sample_grads(model)
    sigma = 2.0
    opt = dp.make_dp_optimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=B,
        generator=torch.Generator().manual_seed(0),
    )
    (per_sample_loss(model, collate(_examples(), 0, "cpu")) * 0).sum().backward()
    opt.step()
    flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    assert flat.numel() > 1000
    assert abs(float(flat.std()) / (sigma * C / B) - 1) < 0.1


def test_non_lora_trainable_parameter_rejected(tiny_model: Path) -> None:
    model = _model(tiny_model)
    model.get_input_embeddings().weight.requires_grad_(True)
    with pytest.raises(ValueError, match="every trainable parameter to be a LoRA matrix"):
        dp.enable_lora_per_sample_grads(model)


def test_opacus_ghost_clipping_matches_by_hand(tiny_model: Path) -> None:
    """Ghost clipping (benchmarked, not shipped) is also correct on PEFT LoRA layers."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    exs = _examples()
    expected, _ = _by_hand(tiny_model, exs)
    model = _model(tiny_model)
    params = [p for p in model.parameters() if p.requires_grad]
    gm = GradSampleModuleFastGradientClipping(
        model, max_grad_norm=C, use_ghost_clipping=True, loss_reduction="mean"
    )
    opt = DPOptimizerFastGradientClipping(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=B,
        loss_reduction="mean",
    )
    crit = DPLossFastGradientClipping(
        gm, opt, torch.nn.CrossEntropyLoss(reduction="mean", ignore_index=-100), "mean"
    )
    batch = collate(exs, 0, "cpu")
    logits = gm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shifted = logits[:, :-1].float()
    loss = crit(
        shifted.reshape(-1, shifted.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        shape=(shifted.shape[0], shifted.shape[1]),
    )
    loss.backward()
    opt.step()
    scale = max(float(t.abs().max()) for t in expected)
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-7 * scale + 1e-9)
