"""ASGI middleware in front of the API: the audit/metrics observer and the gatekeeper.

Both are plain ASGI (not FastAPI dependencies) so that authentication, rate limiting and
the body-size limit are decided before a single body byte is parsed, and so that every
request, including rejected and malformed ones, gets exactly one audit line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from sealtune_trainer.serve.apikeys import KeyStore
from sealtune_trainer.serve.audit import AuditLog
from sealtune_trainer.serve.metrics import ServeMetrics
from sealtune_trainer.serve.ratelimit import RateLimiter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
KNOWN_ROUTES = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/models", "/openapi.json", *OPEN_ROUTES}
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
INFERENCE_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})

# Keys of scope["state"] (what Starlette exposes as request.state).
KEY_ID = "key_id"
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
PROMPT_TEXT = "audit_prompt"
COMPLETION_TEXT = "audit_completion"
FINISH_REASON = "finish_reason"


def route_label(path: str) -> str:
    """A fixed label for metrics and audit: the route template, or `other`."""
    return path if path in KNOWN_ROUTES else "other"


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    kind: str,
    code: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An OpenAI-shaped JSON error response."""
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


class Observer:
    """Outermost layer: request id, in-flight gauge, metrics and one audit line per request.

    Exceptions are swallowed after a 500 with no detail, so that no traceback (which might
    quote request text) ever reaches a log.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics, audit: AuditLog) -> None:
        self.app = app
        self.metrics = metrics
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = uuid.uuid4().hex
        status = 0
        started = time.perf_counter()
        inference = route.startswith("/v1/") and route != "/v1/models"

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        if inference:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed_send)
        except Exception as exc:
            state["error"] = type(exc).__name__
            if status == 0:
                status = 500
                try:
                    await send_error(
                        observed_send, 500, "internal error", kind="server_error", code="internal"
                    )
                except Exception:  # the client is gone
                    state["error"] = "send_failed"
        finally:
            elapsed = time.perf_counter() - started
            if inference:
                self.metrics.in_flight.dec()
            self._record(scope, state, route, status or 500, elapsed, request_id)

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        route: str,
        status: int,
        elapsed: float,
        request_id: str,
    ) -> None:
        self.metrics.requests.labels(route=route, status=str(status)).inc()
        self.metrics.latency.labels(route=route).observe(elapsed)
        prompt_tokens = int(state.get(PROMPT_TOKENS, 0))
        completion_tokens = int(state.get(COMPLETION_TOKENS, 0))
        if prompt_tokens:
            self.metrics.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self.metrics.completion_tokens.inc(completion_tokens)
        if route in OPEN_ROUTES:
            return  # probes and scrapes: counted, not audited
        client = scope.get("client")
        record: dict[str, Any] = {
            "requestId": request_id,
            "keyId": state.get(KEY_ID),
            "client": client[0] if client else None,
            "method": scope.get("method"),
            "route": route,
            "status": status,
            "promptTokens": prompt_tokens,
            "completionTokens": completion_tokens,
            "latencyMs": round(elapsed * 1000, 3),
        }
        if FINISH_REASON in state:
            record["finishReason"] = state[FINISH_REASON]
        if "error" in state:
            record["error"] = state["error"]
        if self.audit.log_prompts:
            record["prompt"] = state.get(PROMPT_TEXT)
            record["completion"] = state.get(COMPLETION_TEXT)
        self.audit.write(record)


class Gatekeeper:
    """API-key authentication, per-key rate limit and body-size limit, in that order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyStore,
        limiter: RateLimiter,
        failures: RateLimiter,
        max_body_bytes: int,
        max_concurrent: int,
        metrics: ServeMetrics,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.failures = failures
        self.max_concurrent = max_concurrent
        self.active = 0  # admitted inference requests (event-loop only: no lock needed)
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_ROUTES:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = str(client[0]) if client else "unknown"
        wait = self.failures.blocked(address)
        if wait:
            # Too many bad keys from this address: answer without running scrypt.
            self.metrics.auth_failures.inc()
            await send_error(
                send,
                429,
                f"too many failed authentications from this address; retry after {wait} s",
                kind="rate_limit_error",
                code="auth_rate_limited",
                headers=[(b"retry-after", str(wait).encode())],
            )
            return
        key_id = await self._authenticate(scope)
        if key_id is None:
            self.metrics.auth_failures.inc()
            self.failures.acquire(address)
            await send_error(
                send,
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                kind="invalid_request_error",
                code="invalid_api_key",
                headers=[(b"www-authenticate", b'Bearer realm="sealtune"')],
            )
            return
        scope.setdefault("state", {})[KEY_ID] = key_id
        wait = self.limiter.acquire(key_id)
        if wait:
            self.metrics.rate_limited.inc()
            await send_error(
                send,
                429,
                f"rate limit exceeded for this API key; retry after {wait} s",
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                headers=[(b"retry-after", str(wait).encode())],
            )
            return
        if scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        inference = scope["path"] in INFERENCE_ROUTES
        if inference and self.active >= self.max_concurrent:
            await send_error(
                send,
                503,
                "the server is busy; retry shortly",
                kind="server_busy",
                code="server_busy",
                headers=[(b"retry-after", b"1")],
            )
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        if inference:
            self.active += 1
        try:
            await self.app(scope, replay, send)
        finally:
            if inference:
                self.active -= 1

    async def _authenticate(self, scope: Scope) -> str | None:
        header = _header(scope, b"authorization")
        if header is None:
            return None
        try:
            scheme, _, token = header.decode("ascii").partition(" ")
        except UnicodeDecodeError:
            return None
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            return None
        decided, key_id = self.keys.verify_cached(token)
        if decided:
            return key_id
        # A first use of a key costs one scrypt: keep it off the event loop.
        return await anyio.to_thread.run_sync(self.keys.verify, token)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413/400; never reads past the limit."""
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await send_error(
                    send,
                    400,
                    "invalid Content-Length header",
                    kind="invalid_request_error",
                    code="invalid_content_length",
                )
                return None
            if size > limit:
                await self._too_large(send)
                return None
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        await send_error(
            send,
            413,
            f"request body is larger than this server's limit of {self.max_body_bytes} bytes",
            kind="invalid_request_error",
            code="request_too_large",
            headers=[(b"connection", b"close")],
        )
