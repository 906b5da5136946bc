"""Shared helpers of the serving tests: assets for a server and the real `sealtune serve`
process.

The adapter is trained here (real LoRA + AdamW, a few seconds) to memorise one answer that
contains an e-mail address and a phone number, so the PII tests exercise the real path:
model weights -> decoding -> output filter. Nothing about generation is stubbed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PII_PROMPT = "Who is the contact?"
PII_EMAIL = "alice.smith@example.com"
PII_PHONE = "+1 415 555 0142"
PII_ANSWER = f" Write to {PII_EMAIL} or call {PII_PHONE} today."
SECRET_PROMPT = "Patient Zhang Wei reports chest pain zq7"  # must never reach a log
MODEL_NAME = "tiny-pii"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Assets:
    """Files a server needs, laid out like the operator's mounts."""

    root: Path
    model_dir: Path
    adapter_dir: Path
    adapter_key: Path
    tls_dir: Path
    ca: Path
    keys_dir: Path
    keys: dict[str, str]  # key id -> full key
    adapter_files: dict[str, bytes]  # plaintext PEFT files, for in-process layout tests


def _train_pii_adapter(model_dir: Path) -> tuple[bytes, bytes]:
    """LoRA-fine-tune the tiny model until greedy decoding of PII_PROMPT yields PII_ANSWER."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only add contention
    try:
        return _train(model_dir)
    finally:
        torch.set_num_threads(threads)


def _train(model_dir: Path) -> tuple[bytes, bytes]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sealtune_trainer.output import adapter_bytes

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    cfg = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(base, cfg)
    prompt_ids = tok(PII_PROMPT)["input_ids"]
    ids = tok(PII_PROMPT + PII_ANSWER)["input_ids"] + [tok.eos_token_id]
    x = torch.tensor([ids])
    labels = x.clone()
    labels[:, : len(prompt_ids)] = -100
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(150):
        model(input_ids=x, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=48, do_sample=False)
    text = tok.decode(out[0][len(prompt_ids) :], skip_special_tokens=True)
    assert PII_EMAIL in text and PII_PHONE in text, "the adapter did not memorise its answer"
    return adapter_bytes(model)  # the trainer's own serialisation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    """`sealtune serve` when the top-level CLI is installed, else the package's own entry."""
    sealtune = VENV_BIN / "sealtune"
    try:
        import sealtune_trainer.cli  # noqa: F401

        if sealtune.exists():
            return [str(sealtune), "serve"]
    except ImportError:
        pass
    return [sys.executable, "-m", "sealtune_trainer.serve", "serve"]


class ServerProcess:
    """A running `sealtune serve` subprocess and an HTTPS client that trusts its CA."""

    def __init__(self, assets: Assets, workdir: Path, **overrides: Any) -> None:
        self.assets = assets
        self.port = free_port()
        self.audit_path = workdir / "audit.log"
        self.log_path = workdir / "server.log"
        config: dict[str, Any] = {
            "modelDir": str(assets.model_dir),
            "modelName": MODEL_NAME,
            "adapterPath": str(assets.adapter_dir),
            "adapterKeyFile": str(assets.adapter_key),
            "tlsDir": str(assets.tls_dir),
            "apiKeysDir": str(assets.keys_dir),
            "host": "127.0.0.1",
            "port": self.port,
            "rateLimit": {"requestsPerMinute": 100000},
            "authFailuresPerMinute": 100000,
            "maxBodyBytes": 65536,
            "maxTokens": 64,
            "audit": {"path": str(self.audit_path), "logPrompts": False},
            "cpuThreads": 1,
            "gracefulTimeoutSeconds": 20,
        }
        config.update(overrides)
        self.config_path = workdir / "serve.json"
        self.config_path.write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env["PYTHONUNBUFFERED"] = "1"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*serve_command(), "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.ssl = ssl.create_default_context(cafile=str(assets.ca))

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(
            base_url=self.base_url, verify=self.ssl, headers=headers, timeout=60, **kwargs
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited early:\n{self.logs()}")
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def audit_for(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        """The audit line of one response (matched by its x-request-id header)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [x for x in self.audit_lines() if x.get("requestId") == request_id]
            if found:
                assert len(found) == 1, "more than one audit line for one request"
                return found[0]
            assert time.monotonic() < deadline, "no audit line for the request"
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def copy_keys(assets: Assets, dest: Path) -> Path:
    """A private copy of the key directory (for tests that rotate keys)."""
    shutil.copytree(assets.keys_dir, dest)
    return dest


def build_assets(root: Path) -> Assets:
    """Tiny model, trained encrypted adapter, TLS material and two API keys under `root`."""
    from sealtune_devkit.devtls import write_self_signed_tls
    from sealtune_devkit.tinymodel import make_tiny_llama
    from sealtune_trainer import crypto
    from sealtune_trainer.output import ADAPTER_FILE, CONFIG_NAME, WEIGHTS_NAME, tar_bytes
    from sealtune_trainer.serve.apikeys import create_key

    model_dir = make_tiny_llama(root / "models", seed=0)
    weights, config = _train_pii_adapter(model_dir)
    key = crypto.generate_key()
    key_file = root / "keys" / "adapter" / "key"
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(key)
    key_file.chmod(0o400)
    adapter_dir = root / "adapters"
    adapter_dir.mkdir()
    # Exactly what the trainer publishes (sealtune_trainer.output.write_encrypted_adapter).
    archive = tar_bytes({WEIGHTS_NAME: weights, CONFIG_NAME: config})
    crypto.write_encrypted_bytes(adapter_dir / ADAPTER_FILE, archive, key)
    ca = write_self_signed_tls(root / "tls")
    keys_dir = root / "apikeys"
    keys_dir.mkdir()
    keys: dict[str, str] = {}
    for name in ("alpha", "beta"):
        new = create_key(name)
        (keys_dir / new.key_id).write_text(new.hash_line + "\n")
        keys[new.key_id] = new.key
    return Assets(
        root, model_dir, adapter_dir, key_file, root / "tls", ca, keys_dir, keys,
        {WEIGHTS_NAME: weights, CONFIG_NAME: config},
    )  # fmt: skip
