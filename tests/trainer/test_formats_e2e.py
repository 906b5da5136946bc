"""sharegpt and plain-text datasets through the whole job, canaries included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.trainer.trainerkit import make_job

from sealtune_trainer.job import run_job

SHAREGPT = "\n".join(
    json.dumps(
        {
            "conversations": [
                {"from": "human", "value": f"Note {i}: call +86 139 1234 {i:04d}"},
                {"from": "gpt", "value": "Logged. Rest and water."},
                {"from": "human", "value": "Anything else?"},
                {"from": "gpt", "value": "Follow up in clinic."},
            ]
        }
    )
    for i in range(24)
)
TEXT = "\n\n".join(f"Ward note {i}: patient stable, phone 13912{i:06d}." for i in range(24))


@pytest.mark.parametrize(("fmt", "raw"), [("sharegpt", SHAREGPT), ("text", TEXT)])
def test_format_end_to_end(fmt: str, raw: str, tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(
        tmp_path,
        tiny_model,
        fmt=fmt,
        raw=raw.encode(),
        training={"batchSize": 8},
        audit={"canaries": 1, "canaryRepetitions": 2},
    )
    summary = run_job(cfg, device="cpu").summary.wire()
    assert summary["records"]["train"] + summary["records"]["heldOut"] == 24
    assert "redactions" not in summary  # exact counts are private statistics
    assert summary["audit"]["canaries"] == 1
    assert 0.0 <= summary["audit"]["canaryExposure"] <= 10.0
    assert summary["privacy"]["epsilon"] <= 8.0
