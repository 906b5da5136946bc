"""In-process tests of the server's parts: API keys, rate limiter, stream PII filter,
config, adapter loading and the decoding engine (real tiny model, real PEFT)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tests.serve.servekit import PII_ANSWER, PII_EMAIL, PII_PHONE, PII_PROMPT, Assets, serve_command

from sealtune_api.serve_config import ServeConfig
from sealtune_trainer import crypto
from sealtune_trainer.output import CONFIG_NAME, WEIGHTS_NAME
from sealtune_trainer.redact import Redactor
from sealtune_trainer.serve import apikeys
from sealtune_trainer.serve.adapter import AdapterError, apply_adapter, load_adapter
from sealtune_trainer.serve.apikeys import KeyStore, create_key, parse_key, verify_hash
from sealtune_trainer.serve.cli import config_from_args, memory_backed, register
from sealtune_trainer.serve.engine import Engine, SamplingParams
from sealtune_trainer.serve.pii_filter import HOLDBACK, OutputFilter
from sealtune_trainer.serve.ratelimit import RateLimiter

# --------------------------------------------------------------------------------- API keys


def test_key_format_and_hash() -> None:
    new = create_key("team-a")
    assert parse_key(new.key) == "team-a"
    assert new.key.startswith("stk_team-a_") and len(new.key) > 50
    assert new.key not in new.hash_line
    assert verify_hash(new.key, new.hash_line)
    assert not verify_hash(new.key[:-1] + ("A" if new.key[-1] != "A" else "B"), new.hash_line)
    other = create_key("team-a")
    assert other.hash_line.split("$")[4] != new.hash_line.split("$")[4]  # fresh salt per key


@pytest.mark.parametrize(
    "bad", ["", "stk_", "stk__" + "a" * 43, "sk_team_" + "a" * 43, "stk_Team_" + "a" * 43,
            "stk_team_short", "stk_team_" + "a" * 43 + "!"],
)  # fmt: skip
def test_malformed_keys_do_not_parse(bad: str) -> None:
    assert parse_key(bad) is None


def test_bad_key_ids_are_refused() -> None:
    for name in ("Upper", "under_score", "-lead", "x" * 41):
        with pytest.raises(apikeys.ApiKeyError):
            create_key(name)


def test_malformed_hash_lines_are_errors() -> None:
    key = create_key("x").key
    for line in ("plain", "scrypt$1$2$3", "scrypt$16384$8$1$!!$!!", "bcrypt$a$b$c$d$e"):
        with pytest.raises(apikeys.ApiKeyError):
            verify_hash(key, line)


def test_keystore_verifies_caches_and_rotates(tmp_path: Path) -> None:
    a, b = create_key("a"), create_key("b")
    (tmp_path / "a").write_text(a.hash_line)
    (tmp_path / "..data").mkdir()  # Secret-volume bookkeeping is ignored
    (tmp_path / "junk").write_text("not a hash")
    store = KeyStore(tmp_path, reload_seconds=0)
    assert len(store) == 1
    assert store.verify(a.key) == "a"
    assert store.verify(a.key) == "a"  # cached path
    forged = a.key[:-2] + ("zz" if not a.key.endswith("zz") else "yy")
    assert store.verify(forged) is None  # the cache never admits a different secret
    assert store.verify(b.key) is None
    (tmp_path / "b").write_text(b.hash_line)
    assert store.verify(b.key) == "b"  # picked up on reload
    (tmp_path / "a").unlink()
    assert store.verify(a.key) is None  # revoked, cache entry dropped
    # Same id, new hash (the key was re-issued): the old key stops working.
    (tmp_path / "b").write_text(create_key("b").hash_line)
    assert store.verify(b.key) is None


def test_key_count_follows_the_directory(tmp_path: Path) -> None:
    store = KeyStore(tmp_path, reload_seconds=0)
    assert store.count() == 0  # /readyz is 503 now
    (tmp_path / "late").write_text(create_key("late").hash_line)
    assert store.count() == 1  # ...and turns ready without a restart


def test_fast_path_never_decides_a_pass_it_has_not_seen(tmp_path: Path) -> None:
    a = create_key("a")
    (tmp_path / "a").write_text(a.hash_line)
    store = KeyStore(tmp_path, reload_seconds=3600)
    assert store.verify_cached("garbage") == (True, None)
    assert store.verify_cached(create_key("zz").key) == (True, None)  # unknown id
    assert store.verify_cached(a.key) == (False, None)  # needs one scrypt first
    assert store.verify(a.key) == "a"
    assert store.verify_cached(a.key) == (True, "a")
    forged = a.key[:-2] + ("zz" if not a.key.endswith("zz") else "yy")
    assert store.verify_cached(forged) == (True, None)


def test_secret_manifest_holds_hashes_only() -> None:
    import yaml

    keys = [create_key("one"), create_key("two")]
    doc = yaml.safe_load(apikeys.secret_manifest(keys, secret_name="s", namespace="ns"))
    assert doc["stringData"] == {k.key_id: k.hash_line for k in keys}
    text = apikeys.secret_manifest(keys, secret_name="s")
    assert all(k.key not in text for k in keys)
    assert "namespace" not in yaml.safe_load(text)["metadata"]


# ------------------------------------------------------------------------------ rate limit


def test_token_bucket_burst_refill_and_retry_after() -> None:
    now = [0.0]
    limiter = RateLimiter(6, burst=2, clock=lambda: now[0])  # one token every 10 s
    assert [limiter.acquire("k") for _ in range(2)] == [0, 0]
    assert limiter.acquire("k") == 10
    assert limiter.acquire("other") == 0  # buckets are per key
    now[0] = 4.0
    assert limiter.acquire("k") == 6
    now[0] = 10.0
    assert limiter.acquire("k") == 0
    now[0] = 1000.0  # long idle: capped at the burst
    assert [limiter.acquire("k") for _ in range(3)] == [0, 0, 10]


def test_blocked_peeks_without_consuming() -> None:
    now = [0.0]
    limiter = RateLimiter(60, burst=1, clock=lambda: now[0])
    assert limiter.blocked("ip") == 0  # unseen
    assert limiter.acquire("ip") == 0
    assert limiter.blocked("ip") == 1 and limiter.blocked("ip") == 1
    now[0] = 1.0
    assert limiter.blocked("ip") == 0 and limiter.acquire("ip") == 0


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(60, burst=100, clock=lambda: 0.0)
    granted: list[int] = []

    def worker() -> None:
        granted.extend(limiter.acquire("k") == 0 for _ in range(50))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100


# ------------------------------------------------------------------------- PII filter


PII_TEXTS = [
    PII_ANSWER,
    "Card 4111 1111 1111 1111 and IBAN DE89 3704 0044 0532 0130 00 on file.",
    "ID 11010519491231002X, mobile 138 0013 8000, ip 192.168.10.20 ok",
]


@settings(max_examples=150, deadline=None)
@given(text=st.sampled_from(PII_TEXTS), cuts=st.lists(st.integers(1, 80), max_size=40),
       prefix=st.text(alphabet="abc .\n", max_size=300))  # fmt: skip
def test_stream_filter_never_releases_pii(text: str, cuts: list[int], prefix: str) -> None:
    redactor = Redactor(mode="mask")
    filt = OutputFilter(ServeConfig.model_validate({}).pii_filter, redactor.redact).stream()
    full = prefix + text + " tail"
    pieces, pos = [], 0
    for c in cuts:
        pieces.append(full[pos : pos + c])
        pos += c
    pieces.append(full[pos:])
    out = "".join(filt.push(p) for p in pieces if p) + filt.flush()
    assert out == redactor.redact(full)
    for secret in ("alice", "555 0142", "4111", "DE89", "11010519", "0013", "192.168"):
        assert secret not in out
    assert filt.redacted


def test_stream_filter_holds_back_then_releases() -> None:
    filt = OutputFilter(
        ServeConfig.model_validate({}).pii_filter, Redactor(mode="mask").redact
    ).stream()
    assert filt.push("x" * (HOLDBACK - 1)) == ""
    assert filt.push("yy") == "x"
    assert filt.flush() == "x" * (HOLDBACK - 2) + "yy"


def test_disabled_filter_passes_through() -> None:
    cfg = ServeConfig.model_validate({"piiFilter": {"enabled": False}}).pii_filter
    filt = OutputFilter(cfg)
    assert filt.apply(PII_EMAIL) == PII_EMAIL
    stream = filt.stream()
    assert stream.push(PII_EMAIL) == PII_EMAIL and stream.flush() == ""


# ---------------------------------------------------------------------------- config


def test_config_files_json_and_yaml(tmp_path: Path) -> None:
    data = {"modelName": "m", "rateLimit": {"requestsPerMinute": 5, "burst": 2},
            "audit": {"logPrompts": True}, "piiFilter": {"entities": ["EMAIL"]}}  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.yaml").write_text(
        "modelName: m\nrateLimit: {requestsPerMinute: 5, burst: 2}\n"
        "audit: {logPrompts: true}\npiiFilter: {entities: [EMAIL]}\n"
    )
    a, b = ServeConfig.load(tmp_path / "c.json"), ServeConfig.load(tmp_path / "c.yaml")
    assert a == b
    assert a.port == 8443 and a.tls_dir == "/tls" and a.api_keys_dir == "/apikeys"
    assert a.adapter_key_file == "/keys/adapter/key" and a.model_dir == "/models"
    assert a.wire()["rateLimit"] == {"requestsPerMinute": 5.0, "burst": 2}


@pytest.mark.parametrize(
    "bad",
    [{"port": 0}, {"rateLimit": {"requestsPerMinute": 0}}, {"maxTokens": 8, "defaultMaxTokens": 9},
     {"piiFilter": {"entities": ["NAME"]}}, {"tlsdir": "/x"}, {"maxBodyBytes": 10}],
)  # fmt: skip
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ServeConfig.model_validate(bad)


def test_flags_override_the_file(tmp_path: Path) -> None:
    data = {"modelName": "file", "port": 9000, "rateLimit": {"requestsPerMinute": 5}}
    (tmp_path / "c.json").write_text(json.dumps(data))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", "--config", str(tmp_path / "c.json"), "--port", "9443", "--rate-limit", "7",
         "--pii-filter", "off", "--pii-entities", "EMAIL,PHONE", "--no-adapter", "--log-prompts",
         "--audit-log", "/var/log/a.log"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.model_name, cfg.port, cfg.rate_limit.requests_per_minute) == ("file", 9443, 7)
    assert not cfg.pii_filter.enabled and cfg.pii_filter.entities == ["EMAIL", "PHONE"]
    assert cfg.adapter_path is None and cfg.audit.log_prompts
    assert cfg.audit.path == "/var/log/a.log"


def test_config_module_stays_light() -> None:
    code = (
        "import sys, sealtune_api.serve_config, sealtune_trainer.serve; "
        "print(any(m.split('.')[0] in ('torch', 'transformers', 'fastapi') "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------- adapter + engine


@pytest.fixture(scope="module")
def engine(assets: Assets) -> Engine:
    cfg = ServeConfig.model_validate(
        {"modelDir": str(assets.model_dir), "adapterPath": str(assets.adapter_dir),
         "adapterKeyFile": str(assets.adapter_key), "device": "cpu"}
    )  # fmt: skip
    return Engine.load(cfg)


def test_engine_reproduces_the_memorised_answer(engine: Engine) -> None:
    gen = engine.generate(
        engine.encode_prompt(PII_PROMPT), SamplingParams(max_tokens=48, temperature=0)
    )
    assert gen.text.startswith(PII_ANSWER.rstrip("."))
    assert PII_EMAIL in gen.text and PII_PHONE in gen.text  # raw model output has PII
    assert gen.finish_reason == "stop"  # the adapter also learned the EOS
    assert gen.completion_tokens == len(gen.token_ids) > 10


def test_stream_deltas_add_up_and_respect_stop(engine: Engine) -> None:
    ids = engine.encode_prompt(PII_PROMPT)
    deltas: list[str] = []
    gen = engine.generate(ids, SamplingParams(max_tokens=48, temperature=0, stop=("@",)),
                          on_text=deltas.append)  # fmt: skip
    assert "".join(deltas) == gen.text == " Write to alice.smith"
    assert gen.finish_reason == "stop"


def test_generation_can_be_cancelled(engine: Engine) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_text(delta: str) -> None:
        seen.append(delta)
        cancel.set()

    gen = engine.generate(engine.encode_prompt("The"), SamplingParams(max_tokens=200,
                          temperature=0), on_text=on_text, cancel=cancel)  # fmt: skip
    assert gen.finish_reason == "cancelled" and gen.completion_tokens < 5


def test_sampling_is_seeded(engine: Engine) -> None:
    ids = engine.encode_prompt("The")
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    assert engine.generate(ids, params).token_ids == engine.generate(ids, params).token_ids


def test_merged_adapter_matches_unmerged_peft(assets: Assets) -> None:
    from transformers import AutoModelForCausalLM

    state, config = load_adapter(assets.adapter_dir, assets.adapter_key)
    x = torch.tensor([[1, 40, 50, 60, 70]])
    outs = []
    for merge in (True, False):
        base = AutoModelForCausalLM.from_pretrained(assets.model_dir, local_files_only=True)
        model = apply_adapter(base, state, config, merge=merge)
        with torch.no_grad():
            outs.append(model(x).logits)
    base = AutoModelForCausalLM.from_pretrained(assets.model_dir, local_files_only=True)
    with torch.no_grad():
        plain = base(x).logits
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    assert not torch.allclose(outs[0], plain, atol=1e-3)  # the adapter does change the model


def test_per_file_layout_loads_the_same(assets: Assets, tmp_path: Path) -> None:
    key = crypto.load_key(assets.adapter_key)
    for name, data in assets.adapter_files.items():
        crypto.write_encrypted_bytes(tmp_path / f"{name}.enc", data, key)
    a_state, a_cfg = load_adapter(assets.adapter_dir, assets.adapter_key)
    b_state, b_cfg = load_adapter(tmp_path, assets.adapter_key)
    assert a_cfg == b_cfg and a_state.keys() == b_state.keys()
    assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)


def test_adapter_errors(assets: Assets, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    with pytest.raises(crypto.WrongKeyError):
        load_adapter(assets.adapter_dir, wrong)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, data in assets.adapter_files.items():
        (plain / name).write_bytes(data)
    with pytest.raises(crypto.NotEncryptedError):  # plaintext adapters are refused
        load_adapter(plain, assets.adapter_key)
    with pytest.raises(AdapterError):
        load_adapter(tmp_path / "missing", assets.adapter_key)
    key = crypto.load_key(assets.adapter_key)
    other = tmp_path / "other"
    other.mkdir()
    crypto.write_encrypted_bytes(other / f"{WEIGHTS_NAME}.enc", b"not safetensors", key)
    crypto.write_encrypted_bytes(other / f"{CONFIG_NAME}.enc", b"{}", key)
    with pytest.raises(AdapterError, match="not a safetensors"):
        load_adapter(other, assets.adapter_key)


def test_adapter_unpack_only_into_memory(assets: Assets, tmp_path: Path) -> None:
    cli = [a for a in serve_command() if a != "serve"]
    repo_dir = Path(__file__).resolve().parent / f".unpack-{os.getpid()}"
    refused = subprocess.run(
        [*cli, "adapter", "unpack", "--adapter", str(assets.adapter_dir), "--key-file",
         str(assets.adapter_key), "--out", str(repo_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "not memory-backed" in refused.stderr
    assert not repo_dir.exists()
    assert memory_backed(Path("/dev/shm"))
    out = Path("/dev/shm") / f"sealtune-test-{os.getpid()}"
    try:
        done = subprocess.run(
            [*cli, "adapter", "unpack", "--adapter", str(assets.adapter_dir / "adapter.tar.enc"),
             "--key-file", str(assets.adapter_key), "--out", str(out)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        for name, data in assets.adapter_files.items():
            assert (out / name).read_bytes() == data
            assert (out / name).stat().st_mode & 0o777 == 0o440
    finally:
        for f in out.glob("*"):
            f.unlink()
        if out.exists():
            out.rmdir()


# ------------------------------------------------------------------- error path, in process


def test_an_internal_error_is_a_bare_500_and_one_audit_line(
    engine: Engine, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Fault injection: generation raises with request text in its message; none of it
    may reach the client, the audit line or any log."""
    import asyncio
    import io

    import httpx

    from sealtune_trainer.serve.app import build_app
    from sealtune_trainer.serve.audit import AuditLog

    class Exploding(Engine):
        def generate(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise RuntimeError("boom: Patient Zhang Wei")

    broken = Exploding(engine.model, engine.tokenizer, model_name="m")
    new = create_key("k")
    (tmp_path / "k").write_text(new.hash_line)
    audit_out = io.StringIO()
    cfg = ServeConfig.model_validate({"modelName": "m", "audit": {"logPrompts": False}})
    app = build_app(
        cfg, keys=KeyStore(tmp_path), audit=AuditLog(cfg.audit, stream=audit_out), engine=broken
    )

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post(
                "/v1/completions",
                json={"model": "m", "prompt": "Patient Zhang Wei", "max_tokens": 2},
                headers={"authorization": f"Bearer {new.key}"},
            )

    r = asyncio.run(call())
    assert r.status_code == 500
    assert "Zhang" not in r.text and r.json()["error"]["message"] == "internal error"
    (line,) = [json.loads(x) for x in audit_out.getvalue().splitlines()]
    assert line["status"] == 500 and line["error"] == "RuntimeError" and line["keyId"] == "k"
    captured = capfd.readouterr()
    assert "Zhang" not in captured.out + captured.err + audit_out.getvalue()
