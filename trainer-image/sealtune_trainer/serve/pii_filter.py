"""Output PII filter: the trainer's redactor applied to completions, also mid-stream.

Streaming is the subtle part: a phone number may arrive split over many tokens, so the
stream filter re-redacts the whole text so far and releases only a prefix that lies at
least `HOLDBACK` characters behind the newest text, longer than any entity the redactor
knows. Released text is therefore final: later tokens cannot turn it into PII.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sealtune_api.serve_config import OutputPiiConfig

HOLDBACK = 128

Redact = Callable[[str], str]


def make_redactor(entities: Sequence[str]) -> Redact:
    """The trainer's masking redactor for `entities`, as a plain function."""
    from sealtune_trainer.redact import Redactor

    return Redactor(list(entities), mode="mask").redact


class OutputFilter:
    """Masks PII in completions when enabled; a no-op otherwise."""

    def __init__(self, cfg: OutputPiiConfig, redact: Redact | None = None) -> None:
        self.enabled = cfg.enabled
        self._redact: Redact | None = None
        if cfg.enabled:
            self._redact = redact or make_redactor(cfg.entities)

    def apply(self, text: str) -> str:
        """The text with PII masked."""
        return self._redact(text) if self._redact is not None else text

    def stream(self) -> StreamFilter:
        """A filter for one streamed completion."""
        return StreamFilter(self._redact)


class StreamFilter:
    """Incremental masking: `push` deltas in, get releasable text out; `flush` at the end."""

    def __init__(self, redact: Redact | None) -> None:
        self._redact = redact
        self._raw: list[str] = []
        self._emitted = ""
        self.redacted = False

    def push(self, delta: str) -> str:
        """Feed raw text; returns text that is safe to send now (maybe empty)."""
        if self._redact is None:
            return delta
        self._raw.append(delta)
        masked = self._redact("".join(self._raw))
        safe = masked[: max(0, len(masked) - HOLDBACK)]
        return self._release(safe)

    def flush(self) -> str:
        """Everything not yet released (call once, when generation ends)."""
        if self._redact is None:
            return ""
        raw = "".join(self._raw)
        masked = self._redact(raw)
        self.redacted = self.redacted or masked != raw
        if not masked.startswith(self._emitted):
            # Cannot happen while HOLDBACK exceeds every entity; never leak, send nothing.
            return ""
        return self._release(masked)

    def _release(self, safe: str) -> str:
        if len(safe) <= len(self._emitted) or not safe.startswith(self._emitted):
            return ""
        out = safe[len(self._emitted) :]
        self._emitted = safe
        return out
