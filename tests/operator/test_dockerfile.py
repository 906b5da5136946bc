"""What can be checked of the operator image without a Docker engine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "operator" / "Dockerfile").read_text()
REQUIREMENTS = (REPO / "operator" / "requirements.txt").read_text().splitlines()


def _instructions(name: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in DOCKERFILE.splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def test_runs_as_uid_65532_non_root() -> None:
    assert _instructions("USER")[-1] == "65532:65532"


def test_entrypoint_is_the_console_script() -> None:
    assert _instructions("ENTRYPOINT") == ['["sealtune-operator"]']
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sealtune-operator"] == "sealtune_operator.main:main"


def test_every_dependency_is_pinned_and_covers_the_operator_extra() -> None:
    pins = [r for r in REQUIREMENTS if r and not r.startswith("#")]
    assert pins and all(re.fullmatch(r"[a-z0-9._-]+==[0-9][\w.+-]*", p) for p in pins), pins
    names = {p.split("==")[0].replace("_", "-") for p in pins}
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for req in extra["operator"]:
        assert re.split(r"[=<>\[ ]", req)[0].lower() in names, req
    # The operator image carries no ML stack.
    assert not names & {"torch", "transformers", "peft", "opacus"}


def test_base_images_pinned_and_read_only_root_friendly() -> None:
    for base in _instructions("FROM"):
        image = base.split()[0]
        assert re.search(r":\d+\.\d+\.\d+", image), image
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE
    assert "compileall" in DOCKERFILE
    assert not _instructions("ADD"), "ADD can fetch URLs; use COPY"
