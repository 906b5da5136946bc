"""Encrypted checkpoints: round trip, key/binding checks, fallback, pruning."""

from __future__ import annotations

from pathlib import Path

import torch

from sealtune_trainer.checkpoint import list_checkpoints, load_latest, save_checkpoint
from sealtune_trainer.crypto import MAGIC, generate_key

BIND = {"job": "j", "uid": "u", "dataset": "d", "config": "c", "plan": "[]"}


def _state(step: int) -> dict:
    return {
        "step": step,
        "w": torch.full((3,), float(step)),
        "rng": torch.get_rng_state(),
        "history": [(1.1, 0.01, step)],
    }


def test_roundtrip_is_ciphertext_and_exact(tmp_path: Path) -> None:
    key = generate_key()
    path = save_checkpoint(tmp_path, key, _state(5), BIND)
    raw = path.read_bytes()
    assert raw.startswith(MAGIC) and b"history" not in raw
    got = load_latest(tmp_path, key, BIND)
    assert got is not None and got["step"] == 5
    assert torch.equal(got["w"], torch.full((3,), 5.0))
    assert [tuple(h) for h in got["history"]] == [(1.1, 0.01, 5)]


def test_other_key_or_binding_is_not_resumed(tmp_path: Path) -> None:
    key = generate_key()
    save_checkpoint(tmp_path, key, _state(5), BIND)
    assert load_latest(tmp_path, generate_key(), BIND) is None  # crypto-shredded
    assert load_latest(tmp_path, key, {**BIND, "dataset": "other"}) is None


def test_corrupted_newest_falls_back_and_pruning_keeps_two(tmp_path: Path) -> None:
    key = generate_key()
    for step in (3, 6, 9):
        save_checkpoint(tmp_path, key, _state(step), BIND)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [9, 6]
    newest = tmp_path / "ckpt-00000009.enc"
    data = bytearray(newest.read_bytes())
    data[-5] ^= 0xFF
    newest.write_bytes(bytes(data))
    got = load_latest(tmp_path, key, BIND)
    assert got is not None and got["step"] == 6


def test_stale_later_checkpoints_of_another_run_are_removed(tmp_path: Path) -> None:
    stale_key, key = generate_key(), generate_key()
    save_checkpoint(tmp_path, stale_key, _state(100), BIND)
    save_checkpoint(tmp_path, stale_key, _state(200), BIND)
    assert load_latest(tmp_path, key, BIND) is None
    save_checkpoint(tmp_path, key, _state(3), BIND)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]
    got = load_latest(tmp_path, key, BIND)
    assert got is not None and got["step"] == 3
