"""JSON log lines for the trainer pod, safe by construction.

Each line is one JSON object: time, level, logger, message and only the `extra` fields
our own code attaches (numbers, counts, file names). Exception text from third-party
code is never logged: an unexpected error is logged as its type and the code locations
of its traceback, because a library's message could quote a record.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage() if record.name.startswith("sealtune") else record.msg,
        }
        if record.name == "py.warnings":
            # "file:line: Category: text": keep where and what kind, not the library's text
            # (which could quote a value).
            head = str(record.getMessage()).splitlines()[0]
            out["msg"] = ": ".join(head.split(": ")[:2]) if head else "warning"
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sealtune_trainer").setLevel(level)
    quiet_libraries()


def quiet_libraries() -> None:
    """Silence library chatter (progress bars, hub hints) that has no place in pod logs."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Deprecation chatter only; every other warning (e.g. a numerical RuntimeWarning in the
    # accountant) stays visible, as a JSON line through the logging module.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.captureWarnings(True)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def safe_traceback(exc: BaseException) -> dict[str, Any]:
    """Exception type and frame locations, without the message or source text."""
    frames = [
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}"
        for f in traceback.extract_tb(exc.__traceback__)
    ]
    return {"errorType": type(exc).__name__, "frames": frames[-12:]}
