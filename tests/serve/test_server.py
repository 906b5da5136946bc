"""The real `sealtune serve` process over real TLS: auth, limits, PII filter, audit, metrics,
streaming. One server for the module (fixture `server`)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.serve.servekit import (
    MODEL_NAME,
    PII_EMAIL,
    PII_PHONE,
    PII_PROMPT,
    SECRET_PROMPT,
    Assets,
    ServerProcess,
)


def _completion(prompt: str = "The patient was", **extra: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 8, "temperature": 0, **extra}


def _sse(lines: Iterator[str]) -> list[str]:
    return [line[len("data: ") :] for line in lines if line.startswith("data: ")]


def test_plaintext_http_gets_no_answer(server: ServerProcess) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)


def test_certificate_is_verified(server: ServerProcess) -> None:
    # A client that does not trust the test CA must refuse the connection.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/healthz", timeout=5)


def test_tls_versions_and_ciphers(server: ServerProcess) -> None:
    import socket
    import ssl

    def handshake(ctx: ssl.SSLContext) -> str | None:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.version()

    modern = ssl.create_default_context(cafile=str(server.assets.ca))
    assert handshake(modern) == "TLSv1.3"
    tls12 = ssl.create_default_context(cafile=str(server.assets.ca))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(tls12) == "TLSv1.2"
    cbc = ssl.create_default_context(cafile=str(server.assets.ca))
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    # CBC suites (uvicorn's default cipher string would accept these): refused.
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with pytest.raises(ssl.SSLError):
        handshake(cbc)


def test_probes_need_no_key(server: ServerProcess) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}


def test_missing_key_is_401(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/v1/completions", json=_completion())
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "bad",
    [
        "stk_alpha_" + "A" * 43,  # right id, wrong secret
        "stk_nosuchkey_" + "A" * 43,  # unknown id
        "not-a-key",
        "",
    ],
)
def test_wrong_key_is_401(server: ServerProcess, bad: str) -> None:
    with server.client(bad) as c:
        for path in ("/v1/models", "/v1/completions", "/openapi.json", "/nowhere"):
            r = c.post(path, json=_completion()) if "compl" in path else c.get(path)
            assert r.status_code == 401, path


def test_wrong_secret_after_right_one_is_still_401(server: ServerProcess, key: str) -> None:
    # The verified-key cache must not turn a later wrong secret for the same id into a pass.
    with server.client(key) as good:
        assert good.get("/v1/models").status_code == 200
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    with server.client(forged) as bad:
        assert bad.get("/v1/models").status_code == 401


def test_good_key_completion(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [MODEL_NAME]
        r = c.post("/v1/completions", json=_completion())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert 1 <= body["usage"]["completion_tokens"] <= 8
    assert body["usage"]["prompt_tokens"] > 0
    assert r.headers["x-request-id"]


def test_chat_completion(server: ServerProcess, key: str) -> None:
    req = {
        "model": MODEL_NAME,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 6,
        "temperature": 0,
    }
    with server.client(key) as c:
        r = c.post("/v1/chat/completions", json=req)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert r.json()["usage"]["completion_tokens"] <= 6


def test_unknown_model_is_404(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        r = c.post("/v1/completions", json={**_completion(), "model": "gpt-4"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


def test_max_tokens_over_limit_is_400(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        r = c.post("/v1/completions", json=_completion(max_tokens=65))
        chat = c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 1000,
            },
        )
    for resp in (r, chat):
        assert resp.status_code == 400
        assert "at most 64" in resp.json()["error"]["message"]
        assert resp.json()["error"]["code"] == "max_tokens_too_large"


def test_invalid_body_is_400_without_echo(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        r = c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": {"x": SECRET_PROMPT}})
        bad_json = c.post(
            "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert r.status_code == 400
    assert SECRET_PROMPT not in r.text
    assert "prompt" in r.json()["error"]["message"]
    assert bad_json.status_code == 400


def test_oversized_body_is_413(server: ServerProcess, key: str) -> None:
    big = _completion(prompt="a" * 70000)
    with server.client(key) as c:
        r = c.post("/v1/completions", json=big)
    assert r.status_code == 413
    assert "65536 bytes" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "tiny-pii", "prompt": "'
        for _ in range(100):
            yield b"b" * 1024
        yield b'"}'

    with server.client(key) as c:
        chunked = c.post("/v1/completions", content=chunks())
    assert chunked.status_code == 413


def test_pii_in_model_output_is_masked(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        r = c.post("/v1/completions", json=_completion(PII_PROMPT, max_tokens=48))
    text = r.json()["choices"][0]["text"]
    assert "[EMAIL]" in text and "[PHONE]" in text
    assert PII_EMAIL not in text and PII_PHONE not in text
    assert "Write to" in text  # the rest of the memorised answer is intact


def test_pii_is_masked_in_streams(server: ServerProcess, key: str) -> None:
    with (
        server.client(key) as c,
        c.stream(
            "POST", "/v1/completions", json=_completion(PII_PROMPT, max_tokens=48, stream=True)
        ) as r,
    ):
        assert r.status_code == 200
        raw = r.read().decode()
    assert PII_EMAIL not in raw and PII_PHONE not in raw
    events = _sse(iter(raw.splitlines()))
    deltas = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    text = "".join(deltas)
    assert "[EMAIL]" in text and "[PHONE]" in text
    for fragment in ("alice", "smith", "example", "415", "0142"):  # not even pieces
        assert fragment not in text
        assert not any(fragment in d for d in deltas)


def test_streaming_matches_non_streaming(server: ServerProcess, key: str) -> None:
    req = _completion("Blood pressure", max_tokens=20, stream_options={"include_usage": True})
    with server.client(key) as c:
        whole = c.post("/v1/completions", json=req).json()
        with c.stream("POST", "/v1/completions", json={**req, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    assert text == whole["choices"][0]["text"]
    assert chunks[-1]["usage"] == whole["usage"]
    finishes = [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]]
    assert finishes[-1] == whole["choices"][0]["finish_reason"]


def test_chat_streaming(server: ServerProcess, key: str) -> None:
    req = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 10,
        "temperature": 0,
    }
    with server.client(key) as c:
        whole = c.post("/v1/chat/completions", json=req).json()
        with c.stream("POST", "/v1/chat/completions", json={**req, "stream": True}) as r:
            events = _sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text == whole["choices"][0]["message"]["content"]


def test_stop_sequence(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        free = c.post("/v1/completions", json=_completion(PII_PROMPT, max_tokens=48)).json()
        stopped = c.post(
            "/v1/completions", json=_completion(PII_PROMPT, max_tokens=48, stop=[" or"])
        ).json()
    assert " or" in free["choices"][0]["text"]
    assert stopped["choices"][0]["text"] == free["choices"][0]["text"].split(" or")[0]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_audit_has_one_line_per_request_and_no_prompt(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        ok = c.post("/v1/completions", json=_completion(SECRET_PROMPT))
        too_big = c.post("/v1/completions", json=_completion(SECRET_PROMPT, max_tokens=999))
    with server.client("stk_alpha_" + "Z" * 43) as c:
        denied = c.post("/v1/completions", json=_completion(SECRET_PROMPT))
    lines = [server.audit_for(r.headers["x-request-id"]) for r in (ok, too_big, denied)]
    assert [line["status"] for line in lines] == [200, 400, 401]
    first = lines[0]
    assert first["keyId"] == "alpha"
    assert first["route"] == "/v1/completions"
    usage = ok.json()["usage"]
    assert first["promptTokens"] == usage["prompt_tokens"] > 0
    assert first["completionTokens"] == usage["completion_tokens"]
    assert first["latencyMs"] > 0
    assert re.match(r"\d{4}-\d\d-\d\dT", first["ts"])
    assert lines[1]["keyId"] == "alpha" and lines[2]["keyId"] is None
    generated = ok.json()["choices"][0]["text"]
    audit_text = server.audit_path.read_text()
    for needle in ("Zhang", "chest pain", "zq7"):
        assert needle not in audit_text
        assert needle not in server.logs()
    assert "prompt" not in first and "completion" not in first
    assert generated.strip() == "" or generated not in audit_text


def _metric(text: str, pattern: str) -> float:
    found = re.search(pattern + r" ([\d.e+]+)", text)
    return float(found.group(1)) if found else 0.0


OK_COMPLETIONS = r'sealtune_serve_requests_total\{route="/v1/completions",status="200"\}'
AUTH_FAILURES = r"sealtune_serve_auth_failures_total"
COMPLETION_TOKENS = r"sealtune_serve_completion_tokens_total"


def test_metrics_count_requests(server: ServerProcess, key: str) -> None:
    with server.client() as anon:
        before = anon.get("/metrics").text
    with server.client(key) as c:
        done = [c.post("/v1/completions", json=_completion()) for _ in range(3)]
    assert all(r.status_code == 200 for r in done)
    generated = sum(r.json()["usage"]["completion_tokens"] for r in done)
    with server.client() as anon:
        assert anon.get("/v1/models").status_code == 401
        deadline = time.monotonic() + 10
        while True:  # counters are updated just after each response is sent
            text = anon.get("/metrics").text
            settled = (
                _metric(text, OK_COMPLETIONS) >= _metric(before, OK_COMPLETIONS) + 3
                and _metric(text, AUTH_FAILURES) >= _metric(before, AUTH_FAILURES) + 1
                and "sealtune_serve_requests_in_flight 0.0" in text
            )
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert settled, text
    tokens = _metric(text, COMPLETION_TOKENS) - _metric(before, COMPLETION_TOKENS)
    assert tokens >= generated
    assert "sealtune_serve_request_duration_seconds_bucket" in text
    assert SECRET_PROMPT not in text and "alpha" not in text


def test_docs_ui_is_off_and_schema_needs_a_key(server: ServerProcess, key: str) -> None:
    with server.client(key) as c:
        assert c.get("/docs").status_code == 404
        schema = c.get("/openapi.json").json()
    assert "/v1/completions" in schema["paths"]


def test_assets_layout(assets: Assets) -> None:
    # The adapter on disk is ciphertext only: no safetensors header, no JSON.
    for f in assets.adapter_dir.iterdir():  # adapter.tar.enc
        head = f.read_bytes()[:8]
        assert head == b"SEALTUNE", f.name
