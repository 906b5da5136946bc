"""Publish the trained adapter as one encrypted tar archive.

Layout (documented in docs/trainer.md): `<outputDir>/adapter.tar.enc` is the Sealtune
encrypted file format (see docs/encryption-format.md) around an uncompressed tar with
two members, `adapter_model.safetensors` and `adapter_config.json` (PEFT's own file
names, so `sealtune decrypt` + `tar x` gives a directory PEFT loads as is). The tar is
built in memory with fixed metadata (mtime 0, uid 0, mode 0600): identical weights give
an identical plaintext. The sha256 of the *ciphertext* is what the status reports.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from .crypto import write_encrypted_bytes

ADAPTER_FILE = "adapter.tar.enc"
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def adapter_bytes(model: Any) -> tuple[bytes, bytes]:
    """(safetensors bytes, adapter_config.json bytes) of a PEFT model, in memory."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    state = {
        k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()
    }
    weights = save(state, metadata={"format": "pt"})
    cfg = model.peft_config["default"].to_dict()
    config = json.dumps(
        cfg, indent=2, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v)
    ).encode("utf-8")
    return weights, config


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def write_encrypted_adapter(model: Any, output_dir: Path, key: bytes) -> tuple[Path, str]:
    """Encrypt the adapter into `output_dir/adapter.tar.enc`; return (path, ciphertext sha256)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    weights, config = adapter_bytes(model)
    path = output_dir / ADAPTER_FILE
    archive = tar_bytes({WEIGHTS_NAME: weights, CONFIG_NAME: config})
    digest = write_encrypted_bytes(path, archive, key)
    return path, digest
