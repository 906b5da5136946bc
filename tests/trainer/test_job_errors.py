"""run_job failures: a stable reason, an exit code, and no content in the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.trainer.trainerkit import make_job

from sealtune_trainer.crypto import generate_key
from sealtune_trainer.job import JobError, run_job


def test_wrong_dataset_key_exit_5(tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(tmp_path, tiny_model, n_records=8)
    Path(cfg.dataset.key_file).write_bytes(generate_key())
    with pytest.raises(JobError) as info:
        run_job(cfg, device="cpu")
    assert info.value.reason == "DatasetDecryptError" and info.value.exit_code == 5


def test_pinned_manifest_mismatch_exit_4(tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(tmp_path, tiny_model, n_records=8, manifest="f" * 64)
    with pytest.raises(JobError) as info:
        run_job(cfg, device="cpu")
    assert info.value.reason == "ModelIntegrityError" and info.value.exit_code == 4


def test_qlora_on_cpu_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(tmp_path, tiny_model, n_records=8, training={"method": "qlora"})
    with pytest.raises(JobError) as info:
        run_job(cfg, device="cpu")
    assert info.value.reason == "QLoRAUnavailable" and info.value.exit_code == 2
    assert "CUDA GPU" in str(info.value)


def test_missing_key_file_exit_5(tiny_model: Path, tmp_path: Path) -> None:
    cfg = make_job(tmp_path, tiny_model, n_records=8)
    Path(cfg.output_key_file).unlink()
    with pytest.raises(JobError) as info:
        run_job(cfg, device="cpu")
    assert info.value.exit_code == 5


def test_dataset_with_another_digest_is_refused_before_decryption(
    tiny_model: Path, tmp_path: Path
) -> None:
    cfg = make_job(tmp_path, tiny_model, n_records=8)
    cfg.dataset.sha256 = "0" * 64
    with pytest.raises(JobError) as info:
        run_job(cfg, device="cpu")
    assert info.value.reason == "DatasetIntegrityError" and info.value.exit_code == 3
