"""The `sealtune` command: one argparse parser, subcommands contributed by modules.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, adding subcommands with
`set_defaults(func=...)`. Modules defer heavy imports (torch, transformers) into their
functions so `sealtune keygen` starts fast. User errors print one line on stderr and exit
non-zero with a code per error class; dataset text and keys never appear in them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from sealtune_api.exitcodes import ExitCode, describe
from sealtune_trainer import crypto

COMMAND_MODULES = [
    "sealtune_trainer.cli_crypto",
    "sealtune_trainer.train_cli",
    "sealtune_trainer.plan",
    "sealtune_trainer.serve.cli",
]

EXIT_OK = ExitCode.OK
EXIT_FAILURE = ExitCode.RUNTIME
EXIT_USAGE = ExitCode.USAGE  # argparse's own code for bad arguments
# Distinct codes per encrypted-format problem, from the one table in sealtune_api.exitcodes.
CRYPTO_EXIT_CODES: dict[type[crypto.CryptoError], int] = {
    crypto.InvalidKeyError: ExitCode.KEY,
    crypto.WrongKeyError: ExitCode.KEY,
    crypto.CorruptedError: ExitCode.CORRUPTED,  # also AppendedDataError
    crypto.TruncatedError: ExitCode.TRUNCATED,
    crypto.ReorderedError: ExitCode.REORDERED,
    crypto.UnsupportedVersionError: ExitCode.UNSUPPORTED_VERSION,
    crypto.NotEncryptedError: ExitCode.NOT_ENCRYPTED,
}
EXIT_CRYPTO_OTHER = ExitCode.CRYPTO_OTHER
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

_EPILOG = describe()


class UserError(Exception):
    """An error the user can fix; printed as one line, no traceback. Never put data in it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True if `module` itself (or a parent package of it) does not exist."""
    parts = module.split(".")
    return exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with every available module's subcommands."""
    parser = argparse.ArgumentParser(
        prog="sealtune",
        description="Encrypted data, PII redaction, DP-LoRA training and serving for Sealtune.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if _is_missing(e, name):
                continue  # not written yet / not installed in this image
            raise
        module.register(subparsers)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sealtune")
    except Exception:
        return "unknown"


def _fail(message: str, code: int) -> int:
    print(f"sealtune: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sealtune` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Any = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except crypto.CryptoError as e:
        code = next(
            (c for cls, c in CRYPTO_EXIT_CODES.items() if isinstance(e, cls)), EXIT_CRYPTO_OTHER
        )
        return _fail(f"{type(e).__name__}: {e}", code)
    except UserError as e:
        return _fail(str(e), e.exit_code)
    except BrokenPipeError:
        # The reader went away (`sealtune decrypt f.enc - | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or type(e).__name__}{where}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # a bug: one line for the user, the traceback only on request
        if os.environ.get("SEALTUNE_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(e).__name__}); rerun with SEALTUNE_DEBUG=1 for details",
            EXIT_FAILURE,
        )


if __name__ == "__main__":
    sys.exit(main())
