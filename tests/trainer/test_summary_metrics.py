"""Summary fits a termination message; Prometheus metrics carry only numbers."""

from __future__ import annotations

import json
import socket
import urllib.request

from sealtune_trainer.metrics import TrainingMetrics
from sealtune_trainer.summary import build_summary, compact, error_summary


def _summary(n_canaries: int, reasons: int) -> dict:
    audit = {
        "verdict": "failed",
        "reasons": ["r" * 300] * reasons,
        "membershipAuc": 0.7,
        "canaryExposure": 5.0,
        "exposures": [9.123] * n_canaries,
    }
    return build_summary(
        job="j" * 60,
        dp_enabled=True,
        epsilon=7.99,
        target_epsilon=8.0,
        delta=1e-5,
        noise_multiplier=0.9,
        accountant="prv",
        steps=100,
        total_steps=100,
        epochs=2,
        final_loss=1.234567891,
        first_loss=3.0,
        train_records=1000,
        held_out_records=100,
        redactions={"PHONE": 10, "CN_ID": 3},
        audit=audit,
        adapter_path="/output/adapter.tar.enc",
        adapter_sha256="ab" * 32,
        resumed_from_step=None,
        seconds=12.3,
    )


def test_small_summary_kept_whole() -> None:
    s = _summary(4, 1)
    assert json.loads(compact(s)) == json.loads(json.dumps(s))


def test_large_summary_compacted_below_4096_bytes_keeping_essentials() -> None:
    text = compact(_summary(1000, 20))
    assert len(text.encode()) <= 4096
    s = json.loads(text)
    assert s["privacy"]["epsilon"] == 7.99 and s["audit"]["verdict"] == "failed"
    assert s["adapter"]["sha256"] == "ab" * 32 and "exposures" not in s["audit"]
    big_error = compact(error_summary("j", "DatasetFormatError", "x" * 10000))
    assert len(big_error.encode()) <= 4096


def test_infinite_epsilon_is_valid_json() -> None:
    s = build_summary(
        job="j",
        dp_enabled=False,
        epsilon=float("inf"),
        target_epsilon=8.0,
        delta=1e-5,
        noise_multiplier=None,
        accountant="prv",
        steps=1,
        total_steps=1,
        epochs=1,
        final_loss=float("nan"),
        first_loss=None,
        train_records=1,
        held_out_records=1,
        redactions={},
        audit=None,
        adapter_path=None,
        adapter_sha256=None,
        resumed_from_step=None,
        seconds=0.0,
    )
    parsed = json.loads(compact(s))
    assert parsed["privacy"]["epsilon"] == "Infinity" and parsed["finalLoss"] is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_served() -> None:
    port = _free_port()
    m = TrainingMetrics("job-a", port)
    try:
        m.update(step=3, total=10, loss=1.5, tokens_per_second=123.0, epsilon=0.75)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        m.close()
    text = body.decode()
    assert 'sealtune_train_step{job="job-a"} 3.0' in text
    assert 'sealtune_train_total_steps{job="job-a"} 10.0' in text
    assert 'sealtune_train_epsilon{job="job-a"} 0.75' in text
    assert 'sealtune_train_loss{job="job-a"} 1.5' in text
    assert 'sealtune_train_tokens_per_second{job="job-a"} 123.0' in text
