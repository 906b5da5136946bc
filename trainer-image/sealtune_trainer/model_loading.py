"""Load the base model from a local directory, verified, and wrap it with a LoRA adapter.

Nothing is fetched: every `from_pretrained` call passes `local_files_only=True`, and
before any weight is read the directory is checked against its `SHA256SUMS` manifest
(and the manifest against the digest the job pinned), so a swapped or tampered model
fails before it can run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sealtune_api.trainer_config import TrainingConfig

MANIFEST_NAME = "SHA256SUMS"


class ModelIntegrityError(RuntimeError):
    """The model directory does not match its manifest or the pinned manifest digest."""


class QLoRAUnavailableError(RuntimeError):
    """QLoRA was requested but needs a CUDA GPU and bitsandbytes."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model_dir(model_dir: str | Path, expected_manifest_sha256: str | None) -> str | None:
    """Check every file listed in SHA256SUMS (and the manifest's own digest when pinned).

    Returns the manifest digest, or None when the directory has no manifest and none was
    pinned. A pinned digest with a missing manifest is an error.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelIntegrityError(f"model directory {root} does not exist")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        if expected_manifest_sha256:
            raise ModelIntegrityError(
                f"model is pinned by manifestSha256 but {root} has no {MANIFEST_NAME}"
            )
        return None
    digest = _sha256(manifest)
    if expected_manifest_sha256 and digest != expected_manifest_sha256.lower():
        raise ModelIntegrityError(
            f"{MANIFEST_NAME} digest {digest} does not match the pinned manifestSha256 "
            f"{expected_manifest_sha256}"
        )
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        want, _, rel = line.partition("  ")
        if not rel or len(want) != 64:
            raise ModelIntegrityError(f"{MANIFEST_NAME} line {lineno} is malformed")
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise ModelIntegrityError(f"{MANIFEST_NAME} line {lineno} points outside the model")
        if not path.is_file():
            raise ModelIntegrityError(f"model file {rel} listed in {MANIFEST_NAME} is missing")
        if _sha256(path) != want.lower():
            raise ModelIntegrityError(f"model file {rel} does not match its sha256 in the manifest")
    return digest


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(model_dir: str | Path, training: TrainingConfig, device: str) -> Any:
    """Load the base causal LM (fp32 on CPU, bf16 on GPU; 4-bit for QLoRA, GPU only)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if training.method == "qlora":
        if not cuda_available() or not device.startswith("cuda"):
            raise QLoRAUnavailableError(
                "training.method=qlora needs a CUDA GPU (4-bit bitsandbytes kernels); none is "
                "available. Use method: lora on CPU."
            )
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - GPU images only
            raise QLoRAUnavailableError(
                "training.method=qlora needs the bitsandbytes package in the trainer image"
            ) from exc
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if training.method != "qlora":
        model.to(device)  # type: ignore[arg-type]
    model.config.use_cache = False
    return model


def add_lora(model: Any, training: TrainingConfig) -> Any:
    """Wrap with a PEFT LoRA adapter; everything but the LoRA matrices stays frozen."""
    from peft import LoraConfig, get_peft_model

    if training.method == "qlora":  # pragma: no cover - GPU only
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = LoraConfig(
        r=training.rank,
        lora_alpha=training.alpha,  # type: ignore[arg-type]  # PEFT annotates int, uses float
        lora_dropout=training.dropout,
        target_modules=list(training.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    for name, param in peft_model.named_parameters():
        if "lora_" not in name:
            param.requires_grad_(False)
    return peft_model


def lora_parameters(model: Any) -> list[Any]:
    """The trainable LoRA parameters in a stable order."""
    return [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
