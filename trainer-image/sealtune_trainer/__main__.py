"""Container entry point: `python -m sealtune_trainer [--config /etc/sealtune/config.json]`.

Reads the `TrainerConfig` the operator rendered into a ConfigMap, runs the job with JSON
logs, writes the result summary to the termination-message path and exits with a code
the operator (and a human) can read:

  0  trained; the summary carries the audit verdict (a failed audit is still exit 0:
     the operator turns the verdict into a condition)
  2  bad configuration (invalid config, QLoRA without a GPU)
  3  dataset error (missing file, malformed record: position only, never content)
  4  model integrity error (manifest mismatch, unreadable model)
  5  key or decryption error
  1  anything else (type and code location logged, never the message)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_CONFIG = "/etc/sealtune/config.json"
log = logging.getLogger("sealtune_trainer.main")


def _validation_message(exc: Exception) -> str:
    """Pydantic errors as 'field: problem' without echoing input values."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = [
            ".".join(str(x) for x in e.get("loc", ())) + ": " + str(e.get("msg", ""))
            for e in errors(include_input=False)
        ]
        return "; ".join(parts)[:900]
    return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sealtune_trainer", description=__doc__)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="TrainerConfig JSON")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = ap.parse_args(argv)

    from sealtune_api.exitcodes import ExitCode

    from .logs import safe_traceback, setup_json_logging
    from .summary import error_summary, write_termination_message

    setup_json_logging()
    from pydantic import ValidationError

    from sealtune_api.trainer_config import TrainerConfig

    term_path = "/dev/termination-log"
    try:
        raw = json.loads(Path(args.config).read_text(encoding="utf-8"))
        if isinstance(raw, dict) and isinstance(raw.get("terminationMessagePath"), str):
            term_path = raw["terminationMessagePath"]
        cfg = TrainerConfig.model_validate(raw)
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"cannot read config {args.config}: {type(exc).__name__}"
        log.error(msg)
        write_termination_message(term_path, error_summary("", "ConfigError", msg))
        return ExitCode.USAGE
    except ValidationError as exc:
        msg = "invalid config: " + _validation_message(exc)
        log.error(msg)
        write_termination_message(term_path, error_summary("", "ConfigError", msg))
        return ExitCode.USAGE

    from .job import JobError, run_job

    log.info("trainer starting", extra={"job": cfg.job_name})
    try:
        result = run_job(cfg, device=args.device)
    except JobError as exc:
        log.error("job failed", extra={"reason": exc.reason, "detail": str(exc)})
        write_termination_message(
            cfg.termination_message_path, error_summary(cfg.job_name, exc.reason, str(exc))
        )
        return exc.exit_code
    except Exception as exc:
        log.error("job failed unexpectedly", extra=safe_traceback(exc))
        write_termination_message(
            cfg.termination_message_path,
            error_summary(cfg.job_name, "TrainerError", f"internal error ({type(exc).__name__})"),
        )
        return ExitCode.RUNTIME
    text = write_termination_message(cfg.termination_message_path, result.summary)
    log.info("job finished", extra={"summary": json.loads(text)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
