"""Nothing outside the privacy ledger leaves the trainer pod.

A real trainer process runs on records that carry unique markers; its logs (stderr, JSON
lines), stdout, termination message and Prometheus metrics are then checked: no marker,
no phone number, and no log field or summary key outside the declared public set. A new
log field or summary key must be added here *and* justified in docs/trainer.md's ledger.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

from tests.trainer.trainerkit import make_job, run_trainer

# Log `extra` fields that are public by declaration (see docs/trainer.md, the ledger).
PUBLIC_LOG_FIELDS = {
    "ts", "level", "logger", "msg",
    "job", "records", "entities", "trainExamples", "heldOut", "steps", "sampleRate",
    "noiseMultiplier", "step", "totalSteps", "epoch", "epsilon", "summary", "noisedLoss",
}  # fmt: skip
SUMMARY_KEYS = {
    "job", "phase", "privacy", "steps", "totalSteps", "epochs", "records", "audit", "adapter",
    "resumedFromStep", "seconds", "noisedLoss", "noisedLossInterval",
}  # fmt: skip


def _keys(obj: object) -> set[str]:
    """Every key of a nested JSON object."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_only_ledgered_statistics_leave_the_pod(tiny_model: Path, tmp_path: Path) -> None:
    markers = [f"ZQXMARK{i:04d}" for i in range(40)]
    records = [
        {"instruction": f"Note {m}: call 1391234{i:04d}.", "output": f"Patient {m} is stable."}
        for i, m in enumerate(markers)
    ]
    port = _free_port()
    cfg = make_job(tmp_path, tiny_model, records, training={"batchSize": 8, "epochs": 2})
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["metricsPort"] = port
    (tmp_path / "config.json").write_text(json.dumps(conf))
    scraped: list[str] = []

    def scrape() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                scraped.append(body.read().decode())
            except OSError:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    proc = run_trainer(tmp_path / "config.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    message = (tmp_path / "termination-log").read_text()
    everything = proc.stdout + proc.stderr + message + "".join(scraped)
    for m in markers:
        assert m not in everything
    assert "1391234" not in everything
    for line in proc.stderr.splitlines():
        entry = json.loads(line)  # every line is JSON: nothing bypasses the formatter
        assert set(entry) <= PUBLIC_LOG_FIELDS, (
            f"unledgered log field: {set(entry) - PUBLIC_LOG_FIELDS}"
        )
        assert not _keys(entry) & {"loss", "finalLoss", "firstLoss", "redactions", "samples"}
    summary = json.loads(message)
    assert set(summary) <= SUMMARY_KEYS
    assert summary["privacy"]["ledger"][0]["statistic"] == "adapter"
    assert scraped, "the metrics endpoint was never reachable while training"
    names = {
        ln.split("{")[0].split(" ")[0]
        for text in scraped
        for ln in text.splitlines()
        if ln.startswith("sealtune_")
    }
    assert names <= {
        "sealtune_train_step",
        "sealtune_train_total_steps",
        "sealtune_train_epsilon",
        "sealtune_train_steps_per_second",
        "sealtune_train_noised_loss",
    }
    # the noised loss is released and ledgered, with its own epsilon share
    stats = {e["statistic"].split(" ")[0]: e for e in summary["privacy"]["ledger"]}
    assert stats["noisedLoss"]["epsilon"] > 0 and summary["noisedLoss"]
    assert cfg.job_name
