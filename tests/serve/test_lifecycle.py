"""Server lifecycle with real processes: rate limit, key rotation, redacted prompt logging,
graceful shutdown on SIGTERM, refusal to start unsafely, and `sealtune apikey create`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from tests.serve.servekit import (
    MODEL_NAME,
    Assets,
    ServerProcess,
    copy_keys,
    serve_command,
)

from sealtune_trainer.serve.apikeys import create_key, parse_key, verify_hash


def test_rate_limit_rotation_and_redacted_prompt_log(assets: Assets, tmp_path: Path) -> None:
    keys_dir = copy_keys(assets, tmp_path / "apikeys")
    srv = ServerProcess(
        assets,
        tmp_path,
        apiKeysDir=str(keys_dir),
        rateLimit={"requestsPerMinute": 2},
        authFailuresPerMinute=2,
        keyReloadSeconds=0,
        audit={"path": str(tmp_path / "audit.log"), "logPrompts": True},
    )
    try:
        srv.wait_ready()
        alpha, beta = assets.keys["alpha"], assets.keys["beta"]
        with srv.client(alpha) as c:
            assert [c.get("/v1/models").status_code for _ in range(2)] == [200, 200]
            limited = c.get("/v1/models")
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"

        # The limit is per key: beta still passes. Its prompt is logged, but redacted.
        prompt = "Email bob.jones@example.org the results"
        with srv.client(beta) as c:
            r = c.post(
                "/v1/completions",
                json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": 4, "temperature": 0},
            )
        assert r.status_code == 200

        # Rotation: a new key file is picked up, a removed one stops working.
        gamma = create_key("gamma")
        (keys_dir / "gamma").write_text(gamma.hash_line)
        with srv.client(gamma.key) as c:
            assert c.get("/v1/models").status_code == 200
        (keys_dir / "alpha").unlink()
        with srv.client(alpha) as c:
            assert c.get("/v1/models").status_code == 401
        # Failed authentications are limited per client address (here 2 per minute): the
        # third bad attempt is refused before any key is checked, even a good one.
        with srv.client("stk_alpha_" + "Q" * 43) as c:
            assert c.get("/v1/models").status_code == 401
            blocked = c.get("/v1/models")
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "auth_rate_limited"
        assert int(blocked.headers["retry-after"]) >= 1
        with srv.client(gamma.key) as c:
            assert c.get("/v1/models").status_code == 429
    finally:
        assert srv.stop() == 0

    lines = srv.audit_lines()
    assert [(x["keyId"], x["status"]) for x in lines] == [
        ("alpha", 200), ("alpha", 200), ("alpha", 429), ("beta", 200), ("gamma", 200),
        (None, 401), (None, 401), (None, 429), (None, 429),
    ]  # fmt: skip
    logged = lines[3]
    assert logged["prompt"] == "Email [EMAIL] the results"
    assert isinstance(logged["completion"], str)
    assert "bob.jones" not in srv.audit_path.read_text()


def test_sigterm_finishes_the_in_flight_stream(assets: Assets, tmp_path: Path) -> None:
    # Base model alone (random weights never stop early) and a long completion.
    srv = ServerProcess(assets, tmp_path, adapterPath=None, maxTokens=600, maxConcurrentRequests=1)
    srv.wait_ready()
    req = {
        "model": MODEL_NAME,
        "prompt": "Day one",
        "max_tokens": 600,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    after_signal = 0
    refused = False
    events: list[str] = []
    try:
        # First a client that walks away mid-stream: decoding stops, the server stays up.
        with (
            srv.client(assets.keys["alpha"]) as c,
            c.stream("POST", "/v1/completions", json=req) as r,
        ):
            next(line for line in r.iter_lines() if line.startswith("data: "))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not srv.audit_lines():
            time.sleep(0.05)
        left = srv.audit_lines()[0]
        assert left["status"] == 200 and left["finishReason"] == "disconnected"
        assert left["promptTokens"] > 0
        with srv.client() as c:
            deadline = time.monotonic() + 10
            while "sealtune_serve_requests_in_flight 0.0" not in c.get("/metrics").text:
                assert time.monotonic() < deadline, "the abandoned stream is still in flight"
                time.sleep(0.05)
        with (
            srv.client(assets.keys["alpha"]) as c,
            c.stream("POST", "/v1/completions", json=req) as r,
        ):
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            # One decoding request is all this server admits: a second one is turned away.
            with srv.client(assets.keys["beta"]) as other:
                busy = other.post("/v1/completions", json={**req, "stream": False})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "server_busy"
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not refused:
                try:
                    httpx.get(f"{srv.base_url}/healthz", verify=srv.ssl, timeout=1)
                    time.sleep(0.05)
                except httpx.TransportError:
                    refused = True  # no new connections while draining
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    after_signal += 1
        rc = srv.proc.wait(30)
    finally:
        srv.stop()
    assert rc == 0, srv.logs()
    assert refused
    assert events[-1] == "[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] > 100
    assert after_signal > 10  # the stream really was in flight when SIGTERM arrived
    assert [x["status"] for x in srv.audit_lines()] == [200, 503, 200]
    assert srv.audit_lines()[2]["completionTokens"] == usage["completion_tokens"]
    assert srv.audit_lines()[2]["finishReason"] == "length"


def _run_serve(config: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [*serve_command(), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_refuses_to_start_without_tls(assets: Assets, tmp_path: Path) -> None:
    empty = tmp_path / "tls"
    empty.mkdir()
    result = _run_serve(
        {"modelDir": str(assets.model_dir), "tlsDir": str(empty),
         "apiKeysDir": str(assets.keys_dir)},
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to start without TLS" in result.stderr


def test_refuses_to_start_with_the_wrong_adapter_key(assets: Assets, tmp_path: Path) -> None:
    wrong = tmp_path / "key"
    wrong.write_bytes(os.urandom(32))
    result = _run_serve(
        {
            "modelDir": str(assets.model_dir),
            "adapterPath": str(assets.adapter_dir),
            "adapterKeyFile": str(wrong),
            "tlsDir": str(assets.tls_dir),
            "apiKeysDir": str(assets.keys_dir),
            "host": "127.0.0.1",
            "port": 1,  # never reached: startup fails first
        },
        tmp_path,
    )
    assert result.returncode != 0
    assert "wrong key" in result.stdout + result.stderr
    assert wrong.read_bytes().hex() not in result.stdout + result.stderr


def test_apikey_create_prints_key_once_and_a_hash_only_secret() -> None:
    cmd = [a for a in serve_command() if a != "serve"]
    result = subprocess.run(
        [*cmd, "apikey", "create", "--name", "ci-bot", "--secret-name", "team-a-keys",
         "--namespace", "team-a"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    key = next(w for w in result.stderr.split() if w.startswith("stk_"))
    assert parse_key(key) == "ci-bot"
    assert key not in result.stdout
    manifest = yaml.safe_load(result.stdout)
    assert manifest["kind"] == "Secret" and manifest["apiVersion"] == "v1"
    assert manifest["metadata"] == {
        "name": "team-a-keys",
        "namespace": "team-a",
        "labels": manifest["metadata"]["labels"],
    }
    (entry, hash_line), *_ = manifest["stringData"].items()
    assert entry == "ci-bot" and hash_line.startswith("scrypt$")
    assert verify_hash(key, hash_line)
    assert not verify_hash(key + "x", hash_line)


def test_apikey_create_rejects_bad_names() -> None:
    cmd = [a for a in serve_command() if a != "serve"]
    result = subprocess.run(
        [*cmd, "apikey", "create", "--name", "Bad_Name"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "key id must be" in result.stderr
    assert result.stdout == ""


def test_serve_help_lists_documented_flags() -> None:
    cmd = [a for a in serve_command() if a != "serve"]
    out = subprocess.run([*cmd, "serve", "--help"], capture_output=True, text=True, check=True)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    flags = {w.strip("[],") for w in out.stdout.split() if w.startswith("--")}
    flags.discard("--help")
    missing = sorted(f for f in flags if f"`{f}" not in docs)
    assert not missing, f"flags not documented in docs/serving.md: {missing}"
