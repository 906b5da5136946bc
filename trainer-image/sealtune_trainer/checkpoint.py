"""Encrypted, atomically published training checkpoints.

A checkpoint is the trainer's full state (`Trainer.state_dict()`: adapter, optimizer,
scheduler, RNG and sampler generator states, step, accountant history) serialized with
`torch.save` into memory and written with the per-job checkpoint key through the
crypto module, which publishes by rename: a `kill -9` leaves either the previous or the
new checkpoint, never a torn one. Plaintext never touches the volume. A different key
(a new job, or a deleted job's leftovers: crypto-shredding) simply cannot read them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .crypto import CryptoError, read_encrypted_bytes, write_encrypted_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{8})\.enc$")
KEEP = 2


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.enc"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) pairs, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(
    directory: Path, key: bytes, state: dict[str, Any], binding: dict[str, Any]
) -> Path:
    """Encrypt and publish `state` for `state['step']`, then prune.

    Pruning keeps the newest KEEP checkpoints up to this step and removes any with a
    *later* step: those belong to another run (a different key or configuration, or a
    corrupted file the resume skipped) and would otherwise crowd out this run's own.
    """
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"binding": binding, "state": state}, buf)
    step = int(state["step"])
    path = checkpoint_path(directory, step)
    write_encrypted_bytes(path, buf.getvalue(), key)
    ours = []
    for other_step, other in list_checkpoints(directory):
        if other_step > step:
            with contextlib.suppress(OSError):
                other.unlink()
        else:
            ours.append(other)
    for old in ours[KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def load_latest(directory: Path, key: bytes, binding: dict[str, Any]) -> dict[str, Any] | None:
    """The newest readable checkpoint's state for this job, or None.

    Unreadable files (another key, corruption) and checkpoints bound to a different job
    or configuration are skipped with a warning that names the file, not its content.
    """
    for step, path in list_checkpoints(directory):
        try:
            raw = read_encrypted_bytes(path, key)
        except CryptoError as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path.name, type(exc).__name__)
            continue
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if blob.get("binding") != binding:
            log.warning(
                "skipping checkpoint %s: written for another job or configuration", path.name
            )
            continue
        state: dict[str, Any] = blob["state"]
        if int(state["step"]) != step:
            log.warning("skipping checkpoint %s: step mismatch", path.name)
            continue
        return state
    return None
