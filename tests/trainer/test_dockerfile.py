"""Static checks of the trainer image: non-root user, entry point, offline env, pins, lint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.trainer.trainerkit import REPO

DOCKERFILE = REPO / "trainer-image" / "Dockerfile"
REQUIREMENTS = REPO / "trainer-image" / "requirements.txt"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def test_runs_as_uid_65532() -> None:
    users = [rest for op, rest in _final_stage() if op == "USER"]
    assert users and users[-1].split(":")[0] == "65532"
    assert users[-1].split(":")[1] == "65532"


def test_entrypoint_is_the_trainer_module() -> None:
    final = _final_stage()
    entry = [json.loads(rest) for op, rest in final if op == "ENTRYPOINT"]
    assert entry == [["python", "-m", "sealtune_trainer"]]
    cmd = [json.loads(rest) for op, rest in final if op == "CMD"]
    assert cmd == [["--config", "/etc/sealtune/config.json"]]


def test_offline_environment() -> None:
    env = " ".join(rest for op, rest in _final_stage() if op == "ENV")
    for var in (
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "HF_DATASETS_OFFLINE=1",
        "HOME=/scratch",
    ):
        assert var in env


def test_base_images_pinned() -> None:
    for op, rest in _instructions():
        if op == "FROM":
            image = rest.split()[0]
            assert re.match(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$", image), image


def test_requirements_pinned_and_match_tested_set() -> None:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", line), line
            name, ver = line.split("==")
            pins[name.lower()] = ver
    for critical in ("torch", "transformers", "peft", "opacus", "accelerate", "cryptography"):
        assert critical in pins
    # the image installs exactly what the tests ran with (torch without a local tag)
    for name in ("transformers", "peft", "opacus", "accelerate", "tokenizers", "safetensors"):
        assert version(name) == pins[name], name
    assert version("torch").split("+")[0] == pins["torch"]


def test_hadolint_clean() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
