"""Shared helpers for the trainer tests: a tiny model, encrypted datasets, job configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sealtune_api.trainer_config import TrainerConfig
from sealtune_devkit.demo import make_patient_notes
from sealtune_trainer.crypto import generate_key, read_encrypted_bytes, write_encrypted_bytes

REPO = Path(__file__).resolve().parents[2]
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "vocab_size": 512}


def write_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(generate_key())
    return path


def encrypt_records(path: Path, records: list[Any], key_file: Path, *, jsonl: bool = True) -> None:
    if jsonl:
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_encrypted_bytes(path, text.encode("utf-8"), key_file.read_bytes())


def make_job(
    root: Path,
    model_dir: Path,
    records: list[Any] | None = None,
    *,
    fmt: str = "alpaca",
    training: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
    pii: dict[str, Any] | None = None,
    interval: int = 1000,
    n_records: int = 64,
    manifest: str | None = None,
    raw: bytes | None = None,
) -> TrainerConfig:
    """Keys, an encrypted dataset and a TrainerConfig under `root` (also saved as config.json)."""
    keys = root / "keys"
    data_key = write_key(keys / "dataset" / "key")
    write_key(keys / "output" / "key")
    write_key(keys / "checkpoint" / "key")
    if raw is not None:  # a dataset file given verbatim (e.g. plain text)
        (root / "data").mkdir(parents=True, exist_ok=True)
        write_encrypted_bytes(root / "data" / "train.enc", raw, data_key.read_bytes())
    else:
        if records is None:
            records = make_patient_notes(n_records, seed=3)
        encrypt_records(root / "data" / "train.enc", records, data_key)
    train = {
        "rank": 4,
        "alpha": 8,
        "epochs": 1,
        "learningRate": 0.01,
        "batchSize": 16,
        "microBatchSize": 16,
        "maxSeqLength": 160,
        "seed": 7,
    }
    train.update(training or {})
    cfg = TrainerConfig.model_validate(
        {
            "jobName": "t",
            "jobUid": "uid-1",
            "modelDir": str(model_dir),
            "modelManifestSha256": manifest,
            "dataset": {
                "path": str(root / "data" / "train.enc"),
                "format": fmt,
                "keyFile": str(data_key),
            },
            "outputDir": str(root / "output"),
            "outputKeyFile": str(keys / "output" / "key"),
            "checkpointDir": str(root / "checkpoints"),
            "checkpointKeyFile": str(keys / "checkpoint" / "key"),
            "checkpointIntervalSteps": interval,
            "scratchDir": str(root / "scratch"),
            "metricsPort": 0,
            "terminationMessagePath": str(root / "termination-log"),
            "training": train,
            "privacy": {"enabled": True, "targetEpsilon": 8.0, "delta": 1e-3, **(privacy or {})},
            "pii": pii or {},
            "audit": {"canaries": 0, **(audit or {})},
        }
    )
    (root / "config.json").write_text(json.dumps(cfg.wire()), encoding="utf-8")
    return cfg


def decrypt_adapter(path: Path, key_file: Path) -> dict[str, Any]:
    """Adapter tensors from the encrypted tar, in memory."""
    import io
    import tarfile

    from safetensors.torch import load

    blob = read_encrypted_bytes(path, key_file.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        member = tar.extractfile("adapter_model.safetensors")
        assert member is not None
        return dict(load(member.read()))


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [
            *(str(REPO / d) for d in ("api", "trainer-image", "devkit")),
            str(REPO),
            env.get("PYTHONPATH", ""),
        ]
    )
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        SEALTUNE_CPU_THREADS="1",
    )
    return env


def run_trainer(
    config: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sealtune_trainer",
            "--config",
            str(config),
            "--device",
            "cpu",
            *extra,
        ],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
