"""DP-LoRA training on the tiny model: epsilon lands on target, loss falls, budget stops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tests.trainer.trainerkit import make_job

from sealtune_api.trainer_config import PrivacyConfig, TrainingConfig
from sealtune_trainer import dp
from sealtune_trainer.audit import example_losses
from sealtune_trainer.data import Example
from sealtune_trainer.job import run_job
from sealtune_trainer.model_loading import add_lora, load_base_model, load_tokenizer
from sealtune_trainer.randomness import SecretRandomness
from sealtune_trainer.training import Trainer, make_plan

SECRET = SecretRandomness.derive(b"k" * 32, "test-job")
TARGET = 3.0


@pytest.fixture(scope="module")
def dp_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dprun")
    # A regular task (one answer style) so that a 12-step DP run moves the loss clearly.
    records = [
        {
            "instruction": f"Summarize note {i} for the ward.",
            "output": "Stable, rest and water, follow up in clinic.",
        }
        for i in range(96)
    ]
    cfg = make_job(
        root,
        tiny_model,
        records,
        training={"epochs": 2, "batchSize": 16, "learningRate": 0.02},
        privacy={"targetEpsilon": TARGET, "delta": 1e-3},
    )
    result = run_job(cfg, device="cpu")
    return {"cfg": cfg, "summary": result.summary.wire(), "model": result.model, "root": root}


def test_epsilon_within_five_percent_of_target(dp_run: dict) -> None:
    priv = dp_run["summary"]["privacy"]
    assert priv["dpEnabled"] is True and priv["accountant"] == "prv"
    assert 0.95 * TARGET <= priv["epsilon"] <= TARGET
    assert priv["noiseMultiplier"] > 0.3
    assert dp_run["summary"]["steps"] == dp_run["summary"]["totalSteps"] > 0


def test_loss_goes_down(dp_run: dict, tiny_model: Path) -> None:
    """Eval loss on training records: trained adapter vs the untouched base model."""
    from sealtune_trainer.data import load_encrypted_dataset, redact_records, tokenize_records
    from sealtune_trainer.redact import Redactor

    cfg = dp_run["cfg"]
    tok = load_tokenizer(tiny_model)
    recs = load_encrypted_dataset(
        cfg.dataset.path, Path(cfg.dataset.key_file).read_bytes(), "alpaca"
    )
    recs = redact_records(recs, Redactor(cfg.pii.entities, "mask").redact)
    exs = tokenize_records(tok, recs[:48], cfg.training.max_seq_length)
    base = load_base_model(tiny_model, cfg.training, "cpu")
    before = sum(example_losses(base, exs, tok.pad_token_id, "cpu")) / len(exs)
    after = sum(example_losses(dp_run["model"], exs, tok.pad_token_id, "cpu")) / len(exs)
    assert after < before - 0.1, (before, after)  # measured: 6.30 -> 6.12


def test_rdp_calibration_within_five_percent() -> None:
    privacy = PrivacyConfig(target_epsilon=2.0, delta=1e-5, accountant="rdp")
    sigma = dp.solve_noise_multiplier(privacy, 0.05, 200)
    acc = dp.make_accountant("rdp")
    for _ in range(200):
        acc.step(noise_multiplier=sigma, sample_rate=0.05)
    assert 1.9 <= dp.epsilon_of(acc, 1e-5) <= 2.0


def test_training_stops_when_budget_spent(tiny_model: Path) -> None:
    tc = TrainingConfig(
        rank=2, batch_size=8, micro_batch_size=8, epochs=6, seed=1, target_modules=["q_proj"]
    )
    pc = PrivacyConfig(target_epsilon=2.0, delta=1e-3, accountant="rdp")
    exs = [Example([1, *range(5, 15)], [-100, *range(5, 15)]) for _ in range(32)]
    plan = make_plan(len(exs), tc, pc)  # noise for 24 steps ...
    short = dp.solve_noise_multiplier(pc, plan.sample_rate, 10)  # ... but only enough for 10
    plan = dataclasses.replace(plan, noise_multiplier=short)
    torch.manual_seed(0)
    model = add_lora(load_base_model(tiny_model, tc, "cpu"), tc)
    trainer = Trainer(model, exs, tc, pc, plan, pad_id=0, randomness=SECRET)
    trainer.run()
    assert 10 <= trainer.step < plan.total_steps
    assert trainer.epsilon() >= pc.target_epsilon * 0.99


def test_without_dp_epsilon_is_infinite(tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(
        tmp_path,
        tiny_model,
        n_records=24,
        training={"epochs": 1, "batchSize": 8},
        privacy={"enabled": False},
    )
    summary = run_job(cfg, device="cpu").summary.wire()
    assert summary["privacy"]["dpEnabled"] is False
    # infinite epsilon: no number at all, and the ledger says there is no guarantee
    assert "epsilon" not in summary["privacy"] and "noiseMultiplier" not in summary["privacy"]
    assert summary["privacy"]["ledger"][0]["mechanism"].startswith("none")
    assert summary["steps"] == max(1, round(summary["records"]["train"] / 8))  # keyed split


def test_serving_runtime_loads_the_encrypted_adapter(dp_run: dict, tiny_model: Path) -> None:
    """The trainer's adapter.tar.enc, decrypted in memory by `sealtune serve`'s loader,
    reproduces the trained model's logits exactly."""
    from sealtune_trainer.serve.adapter import apply_adapter, load_adapter

    summary, cfg = dp_run["summary"], dp_run["cfg"]
    # status carries the path inside the output volume; the test volume root is output_dir
    assert summary["adapter"]["path"] == "adapter.tar.enc"
    adapter = Path(cfg.output_dir) / summary["adapter"]["path"]
    state, config = load_adapter(adapter, Path(cfg.output_key_file))
    assert config["r"] == cfg.training.rank
    served = apply_adapter(
        load_base_model(tiny_model, cfg.training, "cpu"), state, config, merge=False
    )
    trained = dp_run["model"]
    trained.eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 2]])
    with torch.no_grad():
        want = trained(input_ids=ids).logits
        got = served(input_ids=ids).logits
        base = load_base_model(tiny_model, cfg.training, "cpu")(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert float((want - base).abs().max()) > 1e-4  # the adapter really changes the model


def test_empty_poisson_draws_still_step_with_noise(tiny_model: Path) -> None:
    tc = TrainingConfig(
        rank=2, batch_size=1, micro_batch_size=1, epochs=1, seed=3, target_modules=["q_proj"]
    )
    pc = PrivacyConfig(target_epsilon=8.0, delta=1e-3, accountant="rdp")
    exs = [Example([1, *range(5, 12)], [-100, *range(5, 12)]) for _ in range(16)]
    plan = make_plan(len(exs), tc, pc)
    torch.manual_seed(0)
    model = add_lora(load_base_model(tiny_model, tc, "cpu"), tc)
    trainer = Trainer(model, exs, tc, pc, plan, pad_id=0, randomness=SECRET)
    sizes: list[int] = []
    before = [p.detach().clone() for p in trainer.params]
    trainer.run(lambda s: sizes.append(s.samples))
    assert len(sizes) == plan.total_steps == 16
    assert 0 in sizes  # P(empty draw) = (15/16)^16 ~ 0.36 per step
    assert len(trainer.accountant.history) == 1 and trainer.accountant.history[0][2] == 16
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.params, strict=True))
