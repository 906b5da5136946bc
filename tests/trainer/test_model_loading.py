"""Model integrity (SHA256SUMS + pinned digest) and QLoRA's GPU requirement."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sealtune_api.trainer_config import TrainingConfig
from sealtune_devkit.tinymodel import manifest_digest
from sealtune_trainer.model_loading import (
    ModelIntegrityError,
    QLoRAUnavailableError,
    add_lora,
    load_base_model,
    verify_model_dir,
)


def test_manifest_verified_and_pinned(tiny_model: Path) -> None:
    digest = manifest_digest(tiny_model)
    assert verify_model_dir(tiny_model, digest) == digest
    assert verify_model_dir(tiny_model, None) == digest
    with pytest.raises(ModelIntegrityError, match="does not match the pinned manifestSha256"):
        verify_model_dir(tiny_model, "0" * 64)


def test_tampered_or_missing_file_detected(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    digest = manifest_digest(copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"model\.safetensors does not match"):
        verify_model_dir(copy, digest)
    weights.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        verify_model_dir(copy, digest)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(ModelIntegrityError, match="no SHA256SUMS"):
        verify_model_dir(copy, digest)


def test_qlora_without_gpu_is_a_clear_error(tiny_model: Path) -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover - the CPU CI has none
        pytest.skip("a GPU is present: QLoRA is allowed here")
    with pytest.raises(QLoRAUnavailableError, match="needs a CUDA GPU"):
        load_base_model(tiny_model, TrainingConfig(method="qlora"), "cpu")


def test_only_lora_matrices_train(tiny_model: Path) -> None:
    tc = TrainingConfig(rank=4, target_modules=["q_proj", "v_proj"])
    model = add_lora(load_base_model(tiny_model, tc, "cpu"), tc)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert not any("embed" in n or "lm_head" in n for n in trainable)
