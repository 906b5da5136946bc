"""The FastAPI application: OpenAI-compatible routes behind the gatekeeper and observer.

`build_app` returns the full ASGI stack `Observer(Gatekeeper(FastAPI))`; uvicorn serves it
over TLS (see `server.py`). Generation runs in worker threads (the engine serialises
sequences), so probes, metrics and rejections stay responsive while a model decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from sealtune_api.serve_config import ServeConfig
from sealtune_trainer.serve import gate
from sealtune_trainer.serve.apikeys import KeyStore
from sealtune_trainer.serve.audit import AuditLog
from sealtune_trainer.serve.engine import Engine, Generation, SamplingParams
from sealtune_trainer.serve.metrics import ServeMetrics
from sealtune_trainer.serve.pii_filter import OutputFilter, Redact
from sealtune_trainer.serve.ratelimit import RateLimiter
from sealtune_trainer.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
)
from sealtune_trainer.serve.sse import ClosingStreamingResponse, sse
from sealtune_trainer.serve.upstream import Upstream, proxy

_END = object()


class ApiError(Exception):
    """A client error answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass
class ServerState:
    """Everything the routes need; one per app."""

    cfg: ServeConfig
    keys: KeyStore
    metrics: ServeMetrics
    audit: AuditLog
    output: OutputFilter
    redact: Redact | None
    engine: Engine | None = None
    loader: Callable[[], Engine] | None = None
    upstream: Upstream | None = None
    created: int = field(default_factory=lambda: int(time.time()))


def _error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build_app(
    cfg: ServeConfig,
    *,
    keys: KeyStore,
    audit: AuditLog,
    engine: Engine | None = None,
    loader: Callable[[], Engine] | None = None,
    redact: Redact | None = None,
) -> Any:
    """The complete ASGI app. Pass a loaded `engine`, or a `loader` run at startup."""
    metrics = ServeMetrics()
    if redact is None and (cfg.pii_filter.enabled or cfg.audit.log_prompts):
        from sealtune_trainer.serve.pii_filter import make_redactor

        redact = make_redactor(cfg.pii_filter.entities)
    output = OutputFilter(cfg.pii_filter, redact)
    upstream = None
    if cfg.upstream_url is not None:
        upstream = Upstream(
            cfg.upstream_url,
            cfg.upstream_model or cfg.model_name,
            cfg.upstream_health_path,
            cfg.upstream_timeout_seconds,
        )
    state = ServerState(
        upstream=upstream,
        cfg=cfg,
        keys=keys,
        metrics=metrics,
        audit=audit,
        output=output,
        redact=redact,
        engine=engine,
        loader=loader,
    )
    api = _fastapi(state)
    gated = gate.Gatekeeper(
        api,
        keys=keys,
        limiter=RateLimiter(cfg.rate_limit.requests_per_minute, cfg.rate_limit.burst),
        failures=RateLimiter(cfg.auth_failures_per_minute),
        max_body_bytes=cfg.max_body_bytes,
        max_concurrent=cfg.max_concurrent_requests,
        metrics=metrics,
    )
    app = gate.Observer(gated, metrics=metrics, audit=audit)
    app.fastapi = api  # type: ignore[attr-defined]
    app.state = state  # type: ignore[attr-defined]
    return app


def _fastapi(st: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if st.engine is None and st.loader is not None:
            st.engine = await anyio.to_thread.run_sync(st.loader)
        try:
            yield
        finally:
            if st.upstream is not None:
                await st.upstream.close()
            st.audit.close()

    api = FastAPI(
        title="Sealtune inference API",
        version="v1",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # one spelling per route; no redirects off the TLS origin
        lifespan=lifespan,
    )

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.code, exc.param), status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Location and reason only: never echo the offending input back.
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse(
            _error_body("invalid request: " + "; ".join(parts), "invalid_request"), status_code=400
        )

    @api.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # No detail: the message of an arbitrary exception may quote request text.
        return JSONResponse(
            {"error": {"message": "internal error", "type": "server_error", "param": None,
                       "code": "internal"}},
            status_code=500,
        )  # fmt: skip

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            _error_body(message, "http_error"), status_code=exc.status_code, headers=exc.headers
        )

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if st.upstream is not None:
            if not await st.upstream.ready():
                return JSONResponse({"status": "backend not ready"}, status_code=503)
        elif st.engine is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        if await anyio.to_thread.run_sync(st.keys.count) == 0:
            return JSONResponse({"status": "no API keys configured"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": st.cfg.model_name,
                    "object": "model",
                    "created": st.created,
                    "owned_by": "sealtune",
                }
            ],
        }

    @api.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        if st.upstream is not None:
            params = _params(st, body, body.max_tokens)
            _check_model(st, body.model)
            _audit_prompt(st, request, "\n".join(body.prompts()))
            return await _forward(st, request, "/v1/completions", body, params, chat=False)
        engine = _ready_engine(st, body.model)
        params = _params(st, body, body.max_tokens)
        prompts = body.prompts()
        ids = await _off_loop_if_long(
            sum(map(len, prompts)), lambda: [engine.encode_prompt(p) for p in prompts]
        )
        _check_context(engine, ids, params.max_tokens)
        _count_prompts(request, ids)
        _audit_prompt(st, request, "\n".join(prompts))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _stream_response(
                st, engine, request, ids, params, chat=False, include_usage=include_usage
            )
        choices, gens = [], []
        for index, one in enumerate(ids):
            gen = await anyio.to_thread.run_sync(engine.generate, one, params)
            text = _finish(st, request, gen)
            gens.append(gen)
            choices.append(
                {"text": text, "index": index, "logprobs": None, "finish_reason": gen.finish_reason}
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": st.cfg.model_name,
            "choices": choices,
            "usage": _usage(gens),
        }

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        params = _params(st, body, body.max_completion_tokens or body.max_tokens)
        if st.upstream is not None:
            _check_model(st, body.model)
            _audit_prompt(st, request, "\n".join(m["content"] for m in body.chat()))
            return await _forward(st, request, "/v1/chat/completions", body, params, chat=True)
        engine = _ready_engine(st, body.model)
        chat = body.chat()
        if not engine.has_chat_template:
            raise ApiError(
                400,
                "the served model has no chat template; use /v1/completions",
                "chat_template_missing",
                "messages",
            )
        ids = [
            await _off_loop_if_long(
                sum(len(m["content"]) for m in chat), lambda: engine.encode_chat(chat)
            )
        ]
        _check_context(engine, ids, params.max_tokens)
        _count_prompts(request, ids)
        _audit_prompt(st, request, "\n".join(m["content"] for m in chat))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _stream_response(
                st, engine, request, ids, params, chat=True, include_usage=include_usage
            )
        gen = await anyio.to_thread.run_sync(engine.generate, ids[0], params)
        text = _finish(st, request, gen)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": st.cfg.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": gen.finish_reason,
                }
            ],
            "usage": _usage([gen]),
        }

    return api


_INLINE_TOKENIZE_CHARS = 8192


async def _off_loop_if_long(chars: int, fn: Callable[[], list[Any]]) -> list[Any]:
    """Tokenize short prompts inline (microseconds), long ones in a worker thread."""
    if chars <= _INLINE_TOKENIZE_CHARS:
        return fn()
    return await anyio.to_thread.run_sync(fn)


def _check_model(st: ServerState, model: str) -> None:
    if model != st.cfg.model_name:
        raise ApiError(
            404, "the requested model does not exist; see /v1/models", "model_not_found", "model"
        )


def _ready_engine(st: ServerState, model: str) -> Engine:
    if st.engine is None:
        raise ApiError(503, "the model is still loading", "model_loading")
    _check_model(st, model)
    return st.engine


async def _forward(
    st: ServerState,
    request: Request,
    path: str,
    body: Any,
    params: SamplingParams,
    *,
    chat: bool,
) -> Any:
    """Front-proxy mode: only validated fields go to the backend, max_tokens always set."""
    assert st.upstream is not None
    payload = body.model_dump(exclude_none=True, exclude={"user", "stream_options", "logprobs"})
    payload.pop("max_completion_tokens", None)
    payload["max_tokens"] = params.max_tokens
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await proxy(
        st.upstream,
        st.output,
        request,
        path,
        payload,
        model_name=st.cfg.model_name,
        chat=chat,
        include_usage=include_usage,
        on_filtered=st.metrics.pii_filtered.inc,
        on_completion=lambda text: _audit_completion(st, request, text),
    )


def _params(st: ServerState, body: Any, max_tokens: int | None) -> SamplingParams:
    wanted = max_tokens if max_tokens is not None else st.cfg.default_max_tokens
    if wanted > st.cfg.max_tokens:
        raise ApiError(
            400,
            f"max_tokens is {wanted}, but this server allows at most {st.cfg.max_tokens}",
            "max_tokens_too_large",
            "max_tokens",
        )
    return SamplingParams(
        max_tokens=wanted,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
    )


def _check_context(engine: Engine, ids: list[list[int]], max_tokens: int) -> None:
    longest = max(len(one) for one in ids)
    if longest + max_tokens > engine.context_length:
        raise ApiError(
            400,
            f"the prompt has {longest} tokens; with max_tokens {max_tokens} that exceeds the "
            f"model's context of {engine.context_length} tokens",
            "context_length_exceeded",
            "max_tokens",
        )
    if longest == 0:
        raise ApiError(400, "the prompt is empty", "empty_prompt", "prompt")


def _audit_prompt(st: ServerState, request: Request, text: str) -> None:
    if st.audit.log_prompts and st.redact is not None:
        request.scope.setdefault("state", {})[gate.PROMPT_TEXT] = st.redact(text)


def _count_prompts(request: Request, ids: list[list[int]]) -> None:
    """Prompt tokens are accounted when encoded, so a stream cut short still shows them."""
    request.scope.setdefault("state", {})[gate.PROMPT_TOKENS] = sum(len(one) for one in ids)


def _count(request: Request, gen: Generation) -> None:
    s = request.scope.setdefault("state", {})
    s[gate.COMPLETION_TOKENS] = s.get(gate.COMPLETION_TOKENS, 0) + gen.completion_tokens
    s[gate.FINISH_REASON] = gen.finish_reason


def _audit_completion(st: ServerState, request: Request, text: str) -> None:
    if st.audit.log_prompts and st.redact is not None:
        s = request.scope.setdefault("state", {})
        previous = s.get(gate.COMPLETION_TEXT)
        redacted = st.redact(text)
        s[gate.COMPLETION_TEXT] = redacted if previous is None else previous + "\n" + redacted


def _finish(st: ServerState, request: Request, gen: Generation) -> str:
    """Filter one finished completion and account for it."""
    text = st.output.apply(gen.text)
    if text != gen.text:
        st.metrics.pii_filtered.inc()
    _count(request, gen)
    _audit_completion(st, request, text)
    return text


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _token_stream(
    engine: Engine, ids: list[int], params: SamplingParams
) -> AsyncIterator[str | Generation]:
    """Text deltas from a generation thread, then the finished `Generation`."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancel = threading.Event()

    def on_text(delta: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, delta)

    def work() -> Generation:
        try:
            return engine.generate(ids, params, on_text=on_text, cancel=cancel)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    future = loop.run_in_executor(None, work)
    try:
        while (item := await queue.get()) is not _END:
            yield str(item)
        yield await future
    finally:
        cancel.set()  # the client went away or we are done: stop decoding


def _stream_response(
    st: ServerState,
    engine: Engine,
    request: Request,
    ids: list[list[int]],
    params: SamplingParams,
    *,
    chat: bool,
    include_usage: bool,
) -> StreamingResponse:
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": index,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return sse(
            {
                "id": ident,
                "object": kind,
                "created": created,
                "model": st.cfg.model_name,
                "choices": [choice],
            }
        )

    async def events() -> AsyncIterator[bytes]:
        try:
            async for event in _events():
                yield event
        finally:
            state = request.scope.setdefault("state", {})
            if state.get(gate.FINISH_REASON) is None or len(gens) < len(ids):
                state[gate.FINISH_REASON] = "disconnected"  # the client left mid-stream

    gens: list[Generation] = []

    async def _events() -> AsyncIterator[bytes]:
        for index, one in enumerate(ids):
            filt = st.output.stream()
            if chat:
                yield chunk(index, None, None, first=True)
            async for item in _token_stream(engine, one, params):
                if isinstance(item, Generation):
                    tail = filt.flush()
                    if tail:
                        yield chunk(index, tail, None)
                    if filt.redacted:
                        st.metrics.pii_filtered.inc()
                    gens.append(item)
                    _count(request, item)
                    _audit_completion(st, request, st.output.apply(item.text))
                    yield chunk(index, None, item.finish_reason)
                else:
                    out = filt.push(item)
                    if out:
                        yield chunk(index, out, None)
        if include_usage:
            yield sse(
                {
                    "id": ident,
                    "object": kind,
                    "created": created,
                    "model": st.cfg.model_name,
                    "choices": [],
                    "usage": _usage(gens),
                }
            )
        yield sse("[DONE]")

    return ClosingStreamingResponse(events())
