"""One table of exit codes for every Sealtune process (the trainer pod, `sealtune ...`).

Before, `sealtune train` used 3 for a dataset error while `sealtune decrypt` used 3 for a
bad key file, and the operator treated 6 as permanent though nothing exited 6. Now each
code means one thing everywhere; the operator's Job `podFailurePolicy` fails fast on
`ExitCode.permanent()` and retries the rest.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    RUNTIME = 1  # unexpected or environmental (I/O, interrupted): retried, may be transient
    USAGE = 2  # bad arguments, config or spec; QLoRA without a GPU
    DATASET = 3  # dataset missing or malformed
    MODEL = 4  # model missing or failed its integrity check
    KEY = 5  # a key file is unreadable or invalid, or a key does not decrypt the data
    AUDIT = 6  # `sealtune train`: the memorization audit failed (adapter written, not fit)
    PRIVACY = 7  # a privacy invariant refused the run (e.g. budget exhausted)
    # Encrypted-format problems, told apart for scripts (`sealtune decrypt`, `inspect`).
    CORRUPTED = 10  # authentication failed or data was appended
    TRUNCATED = 11
    REORDERED = 12
    UNSUPPORTED_VERSION = 13
    NOT_ENCRYPTED = 14
    CRYPTO_OTHER = 15
    INTERRUPTED = 130

    @classmethod
    def permanent(cls) -> list[int]:
        """Codes that retrying the same pod cannot fix."""
        return [
            int(c) for c in (cls.USAGE, cls.DATASET, cls.MODEL, cls.KEY, cls.AUDIT, cls.PRIVACY)
        ]


def describe() -> str:
    """One line for `--help` epilogs."""
    return "exit codes: " + ", ".join(
        f"{int(c)} {c.name.lower().replace('_', ' ')}" for c in ExitCode
    )
