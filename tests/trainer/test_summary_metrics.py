"""The summary fits a termination message and carries the privacy ledger; Prometheus
metrics carry only public numbers (no loss, no token counts)."""

from __future__ import annotations

import json
import socket
import urllib.request
from types import SimpleNamespace

from sealtune_api.summary import TrainerSummary
from sealtune_api.trainer_config import PrivacyConfig
from sealtune_trainer.audit import AuditResult
from sealtune_trainer.metrics import TrainingMetrics
from sealtune_trainer.summary import build_summary, error_summary

PLAN = SimpleNamespace(private=True, total_steps=100, noise_multiplier=0.9, sample_rate=0.016)


def _summary(n_canaries: int, reasons: int, *, private: bool = True) -> TrainerSummary:
    audit = AuditResult(
        canaries=n_canaries,
        exposures=[9.123] * n_canaries,
        mean_exposure=5.0,
        verdict="failed",
        reasons=["r" * 300] * reasons,
        epsilon_lower_bound=0.4,
    )
    plan = PLAN if private else SimpleNamespace(**{**vars(PLAN), "private": False})
    return build_summary(
        job="j" * 60,
        plan=plan,
        privacy=PrivacyConfig(),
        epsilon=7.99 if private else float("inf"),
        group_epsilon={"2": 15.98, "5": 39.95, "10": 79.9} if private else {},
        steps=100,
        epochs=2,
        train_records=1000,
        held_out_records=100,
        audit=audit,
        adapter_path="adapters/adapter.tar.enc",
        adapter_sha256="ab" * 32,
        resumed_from_step=None,
        seconds=12.3,
    )


def test_small_summary_kept_whole_and_parses_back() -> None:
    s = _summary(4, 1)
    assert TrainerSummary.parse(s.to_message()) == s


def test_large_summary_compacted_below_4096_bytes_keeping_essentials() -> None:
    text = _summary(1000, 20).to_message()
    assert len(text.encode()) <= 4096
    s = json.loads(text)
    assert s["privacy"]["epsilon"] == 7.99 and s["audit"]["verdict"] == "failed"
    assert s["adapter"]["sha256"] == "ab" * 32 and "exposures" not in s["audit"]
    big_error = error_summary("j", "DatasetFormatError", "x" * 10000).to_message()
    assert len(big_error.encode()) <= 4096


def test_summary_carries_the_ledger_and_no_private_statistic() -> None:
    """Review: raw loss, exact redaction counts and a private-record AUC left the pod."""
    s = json.loads(_summary(4, 0).to_message())
    assert not {"finalLoss", "firstLoss", "redactions"} & set(s)
    assert "membershipAuc" not in s["audit"]
    ledger = s["privacy"]["ledger"]
    assert ledger[0] == {
        "statistic": "adapter",
        "mechanism": "DP-SGD (Poisson-subsampled Gaussian, per-sample clipping)",
        "epsilon": 7.99,
    }
    # every other release is public by declaration, post-processing, or the total
    assert {e["mechanism"] for e in ledger[1:]} <= {"public", "post-processing", "composition"}
    assert ledger[-2]["statistic"].startswith("total") and ledger[-2]["epsilon"] == 7.99
    assert s["privacy"]["targetEpsilon"] == 8.0 and s["privacy"]["accountant"] == "prv"
    assert s["privacy"]["groupEpsilon"]["5"] == 39.95


def test_infinite_epsilon_without_dp_is_valid_json() -> None:
    s = json.loads(_summary(0, 0, private=False).to_message())
    assert s["privacy"]["dpEnabled"] is False and "epsilon" not in s["privacy"]
    assert s["privacy"]["ledger"][0]["mechanism"].startswith("none")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_served_without_loss_or_token_counts() -> None:
    port = _free_port()
    m = TrainingMetrics("job-a", port)
    try:
        m.update(step=3, total=10, steps_per_second=2.5, epsilon=0.75)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        m.close()
    text = body.decode()
    assert 'sealtune_train_step{job="job-a"} 3.0' in text
    assert 'sealtune_train_total_steps{job="job-a"} 10.0' in text
    assert 'sealtune_train_epsilon{job="job-a"} 0.75' in text
    assert 'sealtune_train_steps_per_second{job="job-a"} 2.5' in text
    assert "sealtune_train_loss" not in text and "tokens" not in text  # only the noised loss
