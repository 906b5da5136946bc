"""Patient-level privacy (`privacy.unit: user`): users are sampled, each user's summed
gradient is clipped once, the accountant counts users, and held-out splits keep a
user's records together. `format: text` records are blank-line-separated blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.trainer.trainerkit import make_job
from torch import nn

from sealtune_api.trainer_config import PrivacyConfig
from sealtune_trainer import dp
from sealtune_trainer.data import (
    DatasetFormatError,
    Record,
    cap_records_per_user,
    parse_records,
    split_held_out,
)
from sealtune_trainer.job import run_job
from sealtune_trainer.randomness import SecretRandomness

SECRET = SecretRandomness.derive(b"u" * 32, "uid")


def test_user_gradient_is_clipped_once_over_all_its_records() -> None:
    p = nn.Parameter(torch.zeros(3))
    opt = dp.make_dp_optimizer(
        torch.optim.SGD([p], lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
        generator=None,
    )
    # user 0 has three records, user 1 one record
    p.grad_sample = torch.tensor([[3.0, 0, 0], [3.0, 0, 0], [3.0, 0, 0], [0, 4.0, 0]])  # type: ignore[attr-defined]
    dp.sum_grad_samples_by_unit([p], [0, 0, 0, 1], 2)
    assert p.grad_sample.shape == (2, 3)  # type: ignore[attr-defined]
    opt.clip_and_accumulate()
    # each user's *sum* is clipped to C=1; record-level clipping would give (3, 1, 0)
    torch.testing.assert_close(p.summed_grad, torch.tensor([1.0, 1.0, 0.0]))  # type: ignore[attr-defined]


def test_user_field_is_read_and_its_absence_named_without_values() -> None:
    raw = b'{"instruction":"a","output":"b","patient_id":"P-1"}\n{"instruction":"c","output":"d"}\n'
    with pytest.raises(DatasetFormatError, match=r"line 2: missing user field 'patient_id'") as e:
        parse_records(raw, "alpaca", "patient_id")
    assert "P-1" not in str(e.value)
    ok = parse_records(raw.split(b"\n")[0], "alpaca", "patient_id")
    assert ok[0].user == "P-1"


def test_text_records_are_blank_line_separated_blocks() -> None:
    raw = b"Note one\nsecond line of note one\n\n\nNote two\n  \nNote three\n"
    recs = parse_records(raw, "text")
    assert [r.text for r in recs] == ["Note one\nsecond line of note one", "Note two", "Note three"]
    assert recs[1].where == "block at line 5"


def test_held_out_split_keeps_a_users_records_together_and_cap_bounds_them() -> None:
    recs = [Record(text=f"note {i}", user=f"patient {i % 50}") for i in range(400)]
    train, held = split_held_out(recs, 0.2, SECRET)
    assert {r.user for r in train}.isdisjoint({r.user for r in held}) and held
    capped = cap_records_per_user(recs, 3, SECRET)
    per_user: dict[str | None, int] = {}
    for r in capped:
        per_user[r.user] = per_user.get(r.user, 0) + 1
    assert set(per_user.values()) == {3} and len(per_user) == 50


def test_user_unit_needs_a_user_field() -> None:
    with pytest.raises(ValueError, match="userField"):
        PrivacyConfig(unit="user")


def test_user_level_job_counts_users(tiny_model: Path, tmp_path: Path) -> None:
    records = [
        {"instruction": f"Summarize visit {v} of patient {p}.", "output": "Stable.", "pid": p}
        for p in range(24)
        for v in range(3)
    ]
    cfg = make_job(
        tmp_path,
        tiny_model,
        records,
        training={"batchSize": 6, "epochs": 1},
        privacy={"unit": "user", "userField": "pid", "maxRecordsPerUser": 2},
        audit={"heldOutFraction": 0.2},
    )
    s = run_job(cfg, device="cpu").summary
    assert s.privacy is not None and s.privacy.unit == "user" and s.privacy.epsilon
    assert s.records is not None and s.records.held_out % 3 == 0  # whole patients held out
    users = (s.records.train) // 2  # capped at 2 records per user
    assert s.total_steps == max(1, round(users / 6))  # T counts users, not records
