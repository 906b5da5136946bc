"""Fixtures for the serving tests: shared assets and the module's main server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.serve.servekit import Assets, ServerProcess, build_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return build_assets(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The main server: generous rate limit, prompts not logged."""
    proc = ServerProcess(assets, tmp_path_factory.mktemp("server"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def key(assets: Assets) -> str:
    return assets.keys["alpha"]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
