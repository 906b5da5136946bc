"""Front-proxy mode (`upstreamUrl`, the vLLM runtime's front container): the real
`sealtune serve` in front of an OpenAI-compatible backend that returns raw PII.

The backend is `tests/serve/upstream_standin.py` (vLLM itself needs a GPU): the project's
own route layer with the filter off, serving the tiny model with the PII adapter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from tests.serve.servekit import (
    MODEL_NAME,
    PII_EMAIL,
    PII_PHONE,
    PII_PROMPT,
    Assets,
    ServerProcess,
    free_port,
)

from sealtune_api.serve_config import ServeConfig

REPO = Path(__file__).resolve().parents[2]


class Front:
    def __init__(self, server: ServerProcess, backend: subprocess.Popen[bytes], url: str) -> None:
        self.server, self.backend, self.url = server, backend, url


@pytest.fixture(scope="module")
def front(assets: Assets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    work = tmp_path_factory.mktemp("front")
    port = free_port()
    backend_cfg = work / "backend.json"
    backend_cfg.write_text(
        json.dumps(
            {"modelDir": str(assets.model_dir), "modelName": "tiny-pii-lora",
             "adapterPath": str(assets.adapter_dir), "adapterKeyFile": str(assets.adapter_key),
             "maxTokens": 256, "audit": {"path": str(work / "backend-audit.log")}}
        )
    )  # fmt: skip
    log = (work / "backend.log").open("wb")
    backend = subprocess.Popen(
        [sys.executable, "-m", "tests.serve.upstream_standin", str(backend_cfg), str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        assets,
        work,
        upstreamUrl=url,
        upstreamModel="tiny-pii-lora",
        adapterPath=None,
        audit={"path": str(work / "audit.log"), "logPrompts": True},
    )
    try:
        server.wait_ready(timeout=120)  # /readyz waits for the backend's /health
        yield Front(server, backend, url)
    finally:
        server.stop()
        backend.terminate()
        backend.wait(30)
        log.close()


def _req(**extra: object) -> dict[str, object]:
    return {"model": MODEL_NAME, "prompt": PII_PROMPT, "max_tokens": 48, "temperature": 0, **extra}


def test_backend_really_emits_pii(front: Front) -> None:
    r = httpx.post(
        f"{front.url}/v1/completions", json={**_req(), "model": "tiny-pii-lora"}, timeout=60
    )
    assert PII_EMAIL in r.json()["choices"][0]["text"]


def test_front_needs_a_key(front: Front) -> None:
    with front.server.client() as c:
        assert c.post("/v1/completions", json=_req()).status_code == 401


def test_front_masks_backend_output(front: Front, key: str) -> None:
    with front.server.client(key) as c:
        r = c.post("/v1/completions", json=_req())
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["choices"][0]["text"]
    assert "[EMAIL]" in text and "[PHONE]" in text
    assert PII_EMAIL not in text and PII_PHONE not in text
    assert body["model"] == MODEL_NAME  # the backend's LoRA name is not exposed
    line = front.server.audit_for(r.headers["x-request-id"])
    assert line["status"] == 200 and line["keyId"] == "alpha"
    assert line["completionTokens"] == body["usage"]["completion_tokens"] > 0
    assert line["promptTokens"] == body["usage"]["prompt_tokens"] > 0
    assert line["prompt"] == PII_PROMPT
    assert "[EMAIL]" in line["completion"] and PII_EMAIL not in line["completion"]


def test_front_masks_streams(front: Front, key: str) -> None:
    with (
        front.server.client(key) as c,
        c.stream("POST", "/v1/completions", json=_req(stream=True)) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in ch or ch["usage"] is None for ch in chunks)  # not asked for
    deltas = [ch["choices"][0]["text"] for ch in chunks if ch.get("choices")]
    text = "".join(deltas)
    assert "[EMAIL]" in text and "[PHONE]" in text
    for fragment in ("alice", "example", "415", "0142"):
        assert not any(fragment in d for d in deltas)
    line = front.server.audit_for(request_id)
    assert line["completionTokens"] > 0 and line["finishReason"] == "stop"
    assert "[PHONE]" in line["completion"] and PII_PHONE not in line["completion"]
    assert PII_EMAIL not in front.server.audit_path.read_text()


def test_front_chat_and_limits(front: Front, key: str) -> None:
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 5, "temperature": 0}  # fmt: skip
    with front.server.client(key) as c:
        ok = c.post("/v1/chat/completions", json=chat)
        too_many = c.post("/v1/completions", json=_req(max_tokens=65))
        wrong_model = c.post("/v1/completions", json=_req(model="tiny-pii-lora"))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
    assert ok.json()["usage"]["completion_tokens"] <= 5
    assert too_many.status_code == 400 and "at most 64" in too_many.text
    assert wrong_model.status_code == 404


def test_backend_down_means_not_ready_and_502(front: Front, key: str) -> None:
    front.backend.terminate()
    front.backend.wait(30)
    with front.server.client(key) as c:
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/completions", json=_req())
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:8000", "http://10.0.0.5:8000", "http://vllm.svc:8000",
            "http://127.0.0.1:8000/v1", "http://127.0.0.1.evil.com:80"],
)  # fmt: skip
def test_upstream_must_be_loopback_http(url: str) -> None:
    with pytest.raises(ValidationError):
        ServeConfig.model_validate({"upstreamUrl": url})
    assert ServeConfig.model_validate({"upstreamUrl": "http://127.0.0.1:8000"}).upstream_url
