"""Server-sent events: the `data:` framing and a response that always closes its stream."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import StreamingResponse


def sse(payload: dict[str, Any] | str) -> bytes:
    """One SSE event carrying JSON (or a literal like `[DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator as soon as the response ends, also when the client left, so
    that decoding (or the upstream request) stops and the audit line sees the outcome
    without waiting for garbage collection."""

    def __init__(self, content: Any) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
