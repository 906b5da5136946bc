"""`python -m sealtune_trainer` end to end: termination message, ciphertext-only volumes,
and resume after a real `kill -9` ending in the same adapter and exactly the same epsilon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.trainer.trainerkit import decrypt_adapter, make_job, run_trainer, trainer_env

from sealtune_devkit.demo import make_patient_notes, scan_ciphertext_only
from sealtune_trainer.crypto import MAGIC

RECORDS = make_patient_notes(64, seed=11)
TRAINING = {"epochs": 4, "batchSize": 8, "microBatchSize": 4, "learningRate": 0.01, "dropout": 0.1}
AUDIT = {"canaries": 2, "canaryRepetitions": 2, "heldOutFraction": 0.2}


def _job(root: Path, model: Path) -> Any:
    return make_job(
        root,
        model,
        RECORDS,
        training=TRAINING,
        audit=AUDIT,
        interval=3,
        privacy={"targetEpsilon": 4.0, "delta": 1e-3},
    )


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ref")
    cfg = _job(root, tiny_model)
    proc = run_trainer(root / "config.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "root": root,
        "cfg": cfg,
        "proc": proc,
        "summary": json.loads((root / "termination-log").read_text()),
    }


def test_termination_message_summary(reference: dict[str, Any]) -> None:
    raw = (reference["root"] / "termination-log").read_bytes()
    assert 0 < len(raw) < 4096
    s = json.loads(raw)
    assert s["phase"] == "Succeeded"
    assert s["privacy"]["dpEnabled"] and 3.8 <= s["privacy"]["epsilon"] <= 4.0
    # the held-out split is keyed by the job's secret, so N varies a little between keys;
    # T = round(N / batch) x epochs with N = train records + 4 canary rows
    n = s["records"]["train"] + 4
    assert s["records"]["train"] + s["records"]["heldOut"] == 64
    assert s["steps"] == s["totalSteps"] == max(1, round(n / 8)) * 4
    assert not {"finalLoss", "firstLoss", "redactions"} & set(s)  # private statistics
    assert s["audit"]["verdict"] in ("passed", "failed")
    assert s["audit"]["canaries"] == 2 and len(s["audit"]["exposures"]) == 2
    assert "membershipAuc" not in s["audit"]
    assert s["adapter"]["path"] == "adapter.tar.enc"  # relative to the output volume
    adapter = Path(reference["cfg"].output_dir) / s["adapter"]["path"]
    assert adapter.read_bytes().startswith(MAGIC)
    import hashlib

    assert hashlib.sha256(adapter.read_bytes()).hexdigest() == s["adapter"]["sha256"]


def test_logs_are_json_and_carry_no_record_text(reference: dict[str, Any]) -> None:
    lines = [ln for ln in reference["proc"].stderr.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        json.loads(ln)  # every line is one JSON object
    blob = reference["proc"].stderr + reference["proc"].stdout
    for rec in RECORDS[:20]:
        name = rec["output"].split(" (")[0]
        assert name not in blob
        assert rec["input"][:30] not in blob


def test_output_and_checkpoints_hold_only_ciphertext(reference: dict[str, Any]) -> None:
    root = reference["root"]
    dirs = [root / "output", root / "checkpoints"]
    assert any(p.is_file() for p in (root / "checkpoints").iterdir())
    markers = tuple({r["output"].split(" (")[0] for r in RECORDS[:30]})
    extra = tuple(r["input"].split("phone ")[1].split(",")[0].encode() for r in RECORDS[:10])
    assert scan_ciphertext_only(dirs, extra=extra) == []
    assert scan_ciphertext_only(dirs, markers=markers) == []
    # and the scanner does find plaintext when it is there
    (root / "output" / "leak.txt").write_text(f"Patient {markers[0]}")
    try:
        assert len(scan_ciphertext_only(dirs, markers=markers)) == 2
    finally:
        (root / "output" / "leak.txt").unlink()


def test_resume_after_kill_9_matches_uninterrupted(
    reference: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    cfg = _job(tmp_path, tiny_model)
    # The same job: the same per-job key, hence the same secret split, draws and noise.
    key = Path(cfg.checkpoint_key_file)
    key.chmod(0o600)
    key.write_bytes((reference["root"] / "keys" / "checkpoint" / "key").read_bytes())
    ckpts = tmp_path / "checkpoints"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealtune_trainer",
            "--config",
            str(tmp_path / "config.json"),
            "--device",
            "cpu",
        ],
        env=trainer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while not (ckpts / "ckpt-00000006.enc").exists():
            assert proc.poll() is None, "trainer ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "termination-log").exists()
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
    # No temporary file of a torn write is left looking like a checkpoint.
    steps = sorted(int(p.name[5:13]) for p in ckpts.glob("ckpt-*.enc"))
    assert steps and max(steps) < reference["summary"]["totalSteps"]

    done = run_trainer(tmp_path / "config.json")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "termination-log").read_text())
    ref = reference["summary"]
    assert resumed["resumedFromStep"] is not None and resumed["resumedFromStep"] >= 6
    assert resumed["privacy"]["epsilon"] == ref["privacy"]["epsilon"]  # exactly
    ref_out, out = Path(reference["cfg"].output_dir), Path(cfg.output_dir)
    a = decrypt_adapter(ref_out / ref["adapter"]["path"], Path(reference["cfg"].output_key_file))
    b = decrypt_adapter(out / resumed["adapter"]["path"], Path(cfg.output_key_file))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)


def test_bad_config_exits_2_with_error_summary(tmp_path: Path) -> None:
    cfg = {
        "jobName": "x",
        "terminationMessagePath": str(tmp_path / "term"),
        "privacy": {"targetEpsilon": -1},
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    proc = run_trainer(tmp_path / "c.json")
    assert proc.returncode == 2
    s = json.loads((tmp_path / "term").read_text())
    assert s["phase"] == "Failed" and s["error"]["reason"] == "ConfigError"
    assert "modelDir" in s["error"]["message"] or "model_dir" in s["error"]["message"]


def test_dataset_error_exit_3_without_content(tiny_model: Path, tmp_path: Path) -> None:
    bad = [
        {"instruction": "fine", "output": "fine"},
        {"instruction": "Zhang Wei 13912345678", "outptu": "typo"},
    ]
    make_job(tmp_path, tiny_model, bad)
    proc = run_trainer(tmp_path / "config.json")
    assert proc.returncode == 3
    s = json.loads((tmp_path / "termination-log").read_text())
    assert s["error"]["reason"] == "DatasetFormatError"
    assert "line 2" in s["error"]["message"]
    assert "Zhang" not in (tmp_path / "termination-log").read_text()
    assert "13912345678" not in proc.stderr + proc.stdout
