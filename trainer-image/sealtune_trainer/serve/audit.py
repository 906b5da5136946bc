"""The audit log: one JSON line per request, to stdout or an append-only file.

Lines carry who (key id), what (route, status), how much (token counts) and how long.
Prompts and completions appear only when `logPrompts` is on, and then only after the
PII redactor has run over them.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any

from sealtune_api.serve_config import AuditLogConfig


class AuditLog:
    """Thread-safe JSON-lines writer; each line is flushed as it is written."""

    def __init__(self, cfg: AuditLogConfig, stream: IO[str] | None = None) -> None:
        self.log_prompts = cfg.log_prompts
        self._own = stream is None and cfg.path != "-"
        if stream is not None:
            self._out = stream
        elif cfg.path == "-":
            self._out = sys.stdout
        else:
            self._out = open(cfg.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Write one line; `ts` is added here (UTC, RFC 3339)."""
        line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": "request"}
        line.update(record)
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=True, default=str)
        with self._lock:
            self._out.write(text + "\n")
            self._out.flush()

    def close(self) -> None:
        """Close the file if this log opened it."""
        if self._own:
            self._out.close()
