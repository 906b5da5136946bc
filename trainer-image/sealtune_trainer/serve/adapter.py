"""Load an encrypted LoRA adapter into memory and apply it to the base model.

Plaintext weights never touch a disk: ciphertext is authenticated and decrypted into
bytes, parsed with `safetensors.torch.load`, and handed to PEFT. Layouts read:

- the trainer's output (`sealtune_trainer.output`): `adapter.tar.enc`, one encrypted tar
  holding `adapter_model.safetensors` and `adapter_config.json`; `path` may be that file
  or the directory that contains it;
- a directory of per-file ciphertexts (`adapter_model.safetensors.enc`,
  `adapter_config.json.enc`).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealtune_trainer import crypto
from sealtune_trainer.output import ADAPTER_FILE, CONFIG_NAME, WEIGHTS_NAME

if TYPE_CHECKING:  # torch is imported only by the functions that need it
    import torch

_SUFFIXES = (".enc", "")  # a plaintext file is found too, and refused by the decryptor


class AdapterError(RuntimeError):
    """The adapter is missing, malformed or does not fit the base model (no secrets in text)."""


def _find(directory: Path, name: str) -> Path:
    for suffix in _SUFFIXES:
        candidate = directory / (name + suffix)
        if candidate.is_file():
            return candidate
    raise AdapterError(
        f"{directory}: neither {ADAPTER_FILE} nor {name}.enc in the adapter directory"
    )


def _from_tar(blob: bytes, source: Path) -> tuple[bytes, bytes]:
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
            files: dict[str, bytes] = {}
            for member in tar.getmembers():
                base = Path(member.name).name
                if member.isfile() and base in (WEIGHTS_NAME, CONFIG_NAME):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files[base] = handle.read()
    except tarfile.TarError:
        raise AdapterError(f"{source}: decrypted adapter is not a tar archive") from None
    missing = {WEIGHTS_NAME, CONFIG_NAME} - files.keys()
    if missing:
        raise AdapterError(f"{source}: adapter archive lacks {', '.join(sorted(missing))}")
    return files[WEIGHTS_NAME], files[CONFIG_NAME]


def decrypt_adapter_files(path: Path, key: bytes) -> tuple[bytes, bytes]:
    """(safetensors bytes, adapter_config.json bytes), decrypted into memory."""
    path = Path(path)
    if path.is_dir() and (path / ADAPTER_FILE).is_file():
        path = path / ADAPTER_FILE
    if path.is_dir():
        weights = crypto.read_encrypted_bytes(_find(path, WEIGHTS_NAME), key)
        config_bytes = crypto.read_encrypted_bytes(_find(path, CONFIG_NAME), key)
    elif path.is_file():
        weights, config_bytes = _from_tar(crypto.read_encrypted_bytes(path, key), path)
    else:
        raise AdapterError(f"{path}: adapter path does not exist")
    return weights, config_bytes


def load_adapter(path: Path, key_file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Decrypt an adapter into memory: (LoRA state dict, adapter_config as a dict)."""
    from safetensors.torch import load as load_safetensors

    weights, config_bytes = decrypt_adapter_files(Path(path), crypto.load_key(key_file))
    try:
        config = json.loads(config_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AdapterError(f"{path}: adapter_config.json is not valid JSON") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{path}: only LoRA adapters are supported")
    try:
        state = load_safetensors(weights)
    except Exception:
        raise AdapterError(f"{path}: adapter weights are not a safetensors file") from None
    del weights
    return state, config


def apply_adapter(
    model: Any, state: dict[str, torch.Tensor], config: dict[str, Any], *, merge: bool = True
) -> Any:
    """Wrap `model` with the LoRA config, load the weights strictly, optionally merge."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    known = LoraConfig.__dataclass_fields__.keys()
    kwargs = {k: v for k, v in config.items() if k in known and k not in ("peft_type",)}
    kwargs["inference_mode"] = True
    lora = LoraConfig(**kwargs)
    peft_model = get_peft_model(model, lora)
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    lora_keys = [k for k, _ in peft_model.named_parameters() if "lora_" in k]
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing or not lora_keys:
        raise AdapterError(
            f"adapter does not fit the base model ({len(unexpected)} unexpected, "
            f"{len(missing)} missing LoRA tensors)"
        )
    peft_model.eval()
    return peft_model.merge_and_unload() if merge else peft_model
