"""Front-proxy mode: the same TLS/API-key/limits/PII/audit front, generation done by an
OpenAI-compatible backend on loopback (vLLM with `--enable-lora` in the same pod).

Only validated, whitelisted fields are forwarded (the request schemas drop unknown ones),
`max_tokens` is always set explicitly to the checked value, and every completion that
comes back, streamed or not, passes the output PII filter before it reaches the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from sealtune_trainer.serve import gate
from sealtune_trainer.serve.pii_filter import OutputFilter, StreamFilter
from sealtune_trainer.serve.sse import ClosingStreamingResponse, sse


class Upstream:
    """An HTTP client for the backend; one connection pool per server."""

    def __init__(self, url: str, model: str, health_path: str, timeout_s: float) -> None:
        self.model = model
        self.health_path = health_path
        self.client = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            trust_env=False,  # never a proxy from the environment: loopback only
        )

    async def ready(self) -> bool:
        """True when the backend answers its health route."""
        try:
            r = await self.client.get(self.health_path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def close(self) -> None:
        await self.client.aclose()


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}},
        status_code=status,
    )


def _upstream_message(r: httpx.Response) -> str:
    try:
        detail = r.json()
        message = detail.get("error", {}).get("message") or detail.get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    return str(message)[:300] or f"the backend rejected the request (status {r.status_code})"


def _record(request: Request, usage: dict[str, Any] | None, finish: str | None) -> None:
    state = request.scope.setdefault("state", {})
    if usage:
        state[gate.PROMPT_TOKENS] = int(usage.get("prompt_tokens") or 0)
        state[gate.COMPLETION_TOKENS] = int(usage.get("completion_tokens") or 0)
    if finish:
        state[gate.FINISH_REASON] = finish


def _filter_choice(choice: dict[str, Any], output: OutputFilter, chat: bool) -> bool:
    """Mask one choice in place; True when something was masked."""
    holder = choice.get("message") if chat else choice
    if not isinstance(holder, dict):
        return False
    key = "content" if chat else "text"
    text = holder.get(key)
    if not isinstance(text, str):
        return False
    masked = output.apply(text)
    holder[key] = masked
    return masked != text


async def proxy(
    upstream: Upstream,
    output: OutputFilter,
    request: Request,
    path: str,
    payload: dict[str, Any],
    *,
    model_name: str,
    chat: bool,
    include_usage: bool,
    on_filtered: Callable[[], None],
    on_completion: Callable[[str], None],
) -> Any:
    """Forward one validated request; filter and account for what comes back."""
    payload = {**payload, "model": upstream.model}
    key = "content" if chat else "text"
    if not payload.get("stream"):
        try:
            r = await upstream.client.post(path, json=payload)
        except httpx.HTTPError:
            return _error(502, "the backend is unavailable", "upstream_unavailable")
        if r.status_code != 200:
            status = r.status_code if 400 <= r.status_code < 500 else 502
            return _error(status, _upstream_message(r), "upstream_rejected")
        body = r.json()
        body["model"] = model_name
        for choice in body.get("choices", []):
            if _filter_choice(choice, output, chat):
                on_filtered()
            holder = choice.get("message") if chat else choice
            if isinstance(holder, dict) and isinstance(holder.get(key), str):
                on_completion(holder[key])
        finishes = [c.get("finish_reason") for c in body.get("choices", [])]
        _record(request, body.get("usage"), finishes[-1] if finishes else None)
        return body

    payload["stream_options"] = {"include_usage": True}  # for the audit line's counts
    stream_ctx = upstream.client.stream("POST", path, json=payload)
    try:
        response = await stream_ctx.__aenter__()
    except httpx.HTTPError:
        return _error(502, "the backend is unavailable", "upstream_unavailable")
    if response.status_code != 200:
        await response.aread()
        await stream_ctx.__aexit__(None, None, None)
        status = response.status_code if 400 <= response.status_code < 500 else 502
        return _error(status, _upstream_message(response), "upstream_rejected")

    async def events() -> AsyncIterator[bytes]:
        filters: dict[int, StreamFilter] = {}
        raw: dict[int, list[str]] = {}
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :].strip()
                if data == "[DONE]":
                    yield b"data: [DONE]\n\n"
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue  # never forward what we cannot filter
                chunk["model"] = model_name
                if chunk.get("usage") and not chunk.get("choices"):
                    _record(request, chunk["usage"], None)
                    if include_usage:
                        yield sse(chunk)
                    continue
                if not include_usage:
                    chunk.pop("usage", None)
                for choice in chunk.get("choices", []):
                    index = int(choice.get("index", 0))
                    filt = filters.setdefault(index, output.stream())
                    holder = choice.get("delta", {}) if chat else choice
                    text = holder.get(key) if isinstance(holder, dict) else None
                    released = filt.push(text) if isinstance(text, str) else ""
                    if isinstance(text, str):
                        raw.setdefault(index, []).append(text)
                    if choice.get("finish_reason"):
                        released += filt.flush()
                        on_completion("".join(raw.pop(index, [])))
                        if filt.redacted:
                            on_filtered()
                        _record(request, None, choice["finish_reason"])
                    if isinstance(holder, dict) and (isinstance(text, str) or released):
                        holder[key] = released
                yield sse(chunk)
        finally:
            await stream_ctx.__aexit__(None, None, None)

    return ClosingStreamingResponse(events())
