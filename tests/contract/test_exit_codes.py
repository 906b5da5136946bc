"""One exit-code table for every Sealtune process (review: `sealtune train` 3 meant a
dataset error, `sealtune decrypt` 3 a bad key file; the operator treated 6 as permanent
though nothing exited 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sealtune_api.exitcodes import ExitCode
from sealtune_trainer.cli import CRYPTO_EXIT_CODES
from sealtune_trainer.crypto import InvalidKeyError, WrongKeyError

REPO = Path(__file__).resolve().parents[2]


def test_codes_are_unique_and_crypto_codes_mean_what_train_codes_mean() -> None:
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values))
    assert CRYPTO_EXIT_CODES[InvalidKeyError] == CRYPTO_EXIT_CODES[WrongKeyError] == ExitCode.KEY
    others = {
        c for cls, c in CRYPTO_EXIT_CODES.items() if cls not in (InvalidKeyError, WrongKeyError)
    }
    # no crypto code reuses a code the trainer gives another meaning
    assert not others & {ExitCode.USAGE, ExitCode.DATASET, ExitCode.MODEL, ExitCode.AUDIT}
    assert ExitCode.AUDIT in ExitCode.permanent() and ExitCode.RUNTIME not in ExitCode.permanent()


def _sealtune(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sealtune_trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_bad_yaml_exits_usage_with_the_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("kind: FineTuneJob\nspec:\n  training: [1, 2\n")
    r = _sealtune("train", "--config", str(bad))
    assert r.returncode == ExitCode.USAGE
    assert "line 4" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_key_file_is_a_key_error_in_decrypt_too(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"short")
    enc = tmp_path / "x.enc"
    enc.write_bytes(b"not encrypted at all")
    r = _sealtune("decrypt", "-k", str(key), str(enc), "-")
    assert r.returncode == ExitCode.KEY, r.stderr
    assert "Traceback" not in r.stderr


def test_serve_startup_errors_are_one_line(tmp_path: Path) -> None:
    """Review: `sealtune serve` printed a 40-line traceback for a YAML typo."""
    bad = tmp_path / "serve.yaml"
    bad.write_text("modelDir: /models\nlisten: [\n")
    r = _sealtune("serve", "--config", str(bad))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "line 3" in r.stderr


def test_operator_fails_fast_on_exactly_the_permanent_codes() -> None:
    from sealtune_operator.finetunejob.render import PERMANENT_EXIT_CODES

    assert ExitCode.permanent() == PERMANENT_EXIT_CODES
    assert all(int(c) in PERMANENT_EXIT_CODES for c in (ExitCode.KEY, ExitCode.AUDIT))
