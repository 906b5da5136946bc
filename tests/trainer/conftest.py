"""Fixtures for the trainer tests: one tiny seeded model per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.trainer.trainerkit import TINY


@pytest.fixture(scope="session", autouse=True)
def _one_cpu_thread() -> None:
    """Tiny models are fastest on one thread; more threads thrash on a shared 2-core box."""
    import os

    import torch

    os.environ["SEALTUNE_CPU_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sealtune_devkit.tinymodel import make_tiny_llama
    from sealtune_trainer.logs import quiet_libraries

    quiet_libraries()
    return make_tiny_llama(tmp_path_factory.mktemp("model") / "tiny", seed=0, **TINY)  # type: ignore[arg-type]
