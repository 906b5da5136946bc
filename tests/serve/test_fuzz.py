"""Hypothesis-generated requests against the real server: never a 5xx, never a crash.

Bodies mix well-formed OpenAI requests with wrong types, out-of-range numbers, odd
Unicode, huge and negative values and arbitrary JSON, on every route and method.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.serve.servekit import MODEL_NAME, ServerProcess

ALLOWED = {200, 400, 401, 404, 405, 413}
NASTY = [  # JSON that Python's parser accepts but a server must still reject cleanly
    b'{"model": "tiny-pii", "prompt": "x", "temperature": NaN}',
    b'{"model": "tiny-pii", "prompt": "x", "top_p": Infinity, "max_tokens": -Infinity}',
    b'{"model": "tiny-pii", "prompt": "x", "max_tokens": 1e400}',
    b'{"model": "tiny-pii", "prompt": "\\ud800", "max_tokens": 2}',
    b'{"model": "tiny-pii", "prompt": "x", "seed": 99999999999999999999999999}',
    b"[" * 5000,
]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
any_json = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, any_json)


text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
message = st.fixed_dictionaries(
    {"role": _maybe(st.sampled_from(["system", "user", "assistant", "developer", "tool"])),
     "content": _maybe(text | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                              "text": text}), max_size=3))},
)  # fmt: skip
common = {
    "model": _maybe(st.just(MODEL_NAME)),
    "max_tokens": _maybe(st.integers(min_value=-3, max_value=70)),
    "temperature": _maybe(st.floats(min_value=-1, max_value=3, allow_nan=False)),
    "top_p": _maybe(st.floats(min_value=-0.5, max_value=1.5, allow_nan=False)),
    "stop": _maybe(text | st.lists(text, max_size=6)),
    "seed": _maybe(st.integers(min_value=-5, max_value=2**64)),
    "stream": _maybe(st.booleans()),
    "n": _maybe(st.integers(min_value=0, max_value=3)),
    "logprobs": _maybe(st.booleans()),
}
completion_body = st.fixed_dictionaries(
    {"prompt": _maybe(text | st.lists(text, max_size=3))},
    optional=common,
)
chat_body = st.fixed_dictionaries(
    {"messages": _maybe(st.lists(message, max_size=3))},
    optional={**common, "max_completion_tokens": _maybe(st.integers(-2, 70))},
)


def _check(r: httpx.Response) -> None:
    assert r.status_code in ALLOWED, (r.status_code, r.text[:300])
    if r.headers.get("content-type", "").startswith("application/json"):
        r.json()


def _post(client: httpx.Client, path: str, body: Any) -> None:
    if isinstance(body, dict) and body.get("stream") is True:
        with client.stream("POST", path, json=body) as r:
            data = r.read().decode()
            assert r.status_code in ALLOWED, (r.status_code, data[:300])
            if r.status_code == 200:
                assert data.rstrip().endswith("data: [DONE]")
        return
    _check(client.post(path, json=body))


fuzz = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@fuzz
@given(body=completion_body)
def test_fuzz_completions(server: ServerProcess, key: str, body: dict[str, Any]) -> None:
    with server.client(key) as c:
        _post(c, "/v1/completions", body)


@fuzz
@given(body=chat_body)
def test_fuzz_chat(server: ServerProcess, key: str, body: dict[str, Any]) -> None:
    with server.client(key) as c:
        _post(c, "/v1/chat/completions", body)


@fuzz
@given(
    path=st.sampled_from(
        ["/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics", "/readyz",
         "/v1/../v1/models", "/v1/completions/", "/%00", "/v2/x"]
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    raw=st.binary(max_size=200)
    | any_json.map(lambda v: json.dumps(v).encode())
    | st.sampled_from(NASTY),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]
    ),
    authed=st.booleans(),
)  # fmt: skip
def test_fuzz_raw_requests(
    server: ServerProcess,
    key: str,
    path: str,
    method: str,
    raw: bytes,
    content_type: str,
    authed: bool,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with server.client(key if authed else None) as c:
        r = c.request(method, path, content=raw, headers=headers)
    _check(r)


def test_server_survived_the_fuzzing(server: ServerProcess, key: str) -> None:
    assert server.proc.poll() is None
    with server.client(key) as c:
        r = c.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "ok", "max_tokens": 2})
        metrics = c.get("/metrics").text
    assert r.status_code == 200
    assert 'status="500"' not in metrics
    assert "Traceback" not in server.logs()
