"""`sealtune keygen | encrypt | decrypt | inspect | redact` through the installed console script."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sealtune_trainer import crypto
from sealtune_trainer.cli import CRYPTO_EXIT_CODES

SEALTUNE = str(Path(sys.executable).parent / "sealtune")
MARKER = b"PATIENT-NOTE-MARKER-7f3a"
SEG = 4096


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SEALTUNE, *args], input=stdin, capture_output=True, timeout=120, check=False
    )


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    assert run("keygen", "-o", str(tmp_path / "key")).returncode == 0
    plain = (MARKER + b" " + os.urandom(200)) * 100  # ~22 KiB: several 4 KiB segments
    (tmp_path / "plain.bin").write_bytes(plain)
    r = run(
        "encrypt", "-k", str(tmp_path / "key"), "--segment-size", str(SEG),
        str(tmp_path / "plain.bin"), str(tmp_path / "data.enc"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_keygen_file_mode_and_formats(tmp_path: Path) -> None:
    raw, b64 = tmp_path / "raw.key", tmp_path / "b64.key"
    r = run("keygen", "-o", str(raw))
    assert r.returncode == 0 and b"key id: " in r.stderr
    assert stat.S_IMODE(raw.stat().st_mode) == 0o400
    assert len(raw.read_bytes()) == 32
    assert r.stderr.decode().split()[-1] == crypto.key_id(raw.read_bytes())
    assert run("keygen", "--base64", "-o", str(b64)).returncode == 0
    assert len(base64.b64decode(b64.read_bytes())) == 32
    assert crypto.load_key(b64) != crypto.load_key(raw)
    again = run("keygen", "-o", str(raw))
    assert again.returncode == 1 and b"exists" in again.stderr
    assert run("keygen", "--force", "-o", str(raw)).returncode == 0
    out = run("keygen", "--base64")
    assert out.returncode == 0 and len(base64.b64decode(out.stdout)) == 32


def test_round_trip_files_stdin_stdout(work: Path) -> None:
    key, plain = str(work / "key"), (work / "plain.bin").read_bytes()
    assert MARKER not in (work / "data.enc").read_bytes()
    r = run("decrypt", "-k", key, str(work / "data.enc"), str(work / "out.bin"))
    assert r.returncode == 0, r.stderr
    assert (work / "out.bin").read_bytes() == plain
    r = run("decrypt", "-k", key, str(work / "data.enc"), "-")
    assert r.returncode == 0 and r.stdout == plain
    r = run("encrypt", "-k", key, "-", str(work / "piped.enc"), stdin=plain)
    assert r.returncode == 0, r.stderr
    assert crypto.read_encrypted_bytes(work / "piped.enc", crypto.load_key(key)) == plain


def test_inspect(work: Path) -> None:
    r = run("inspect", "--json", "-k", str(work / "key"), str(work / "data.enc"))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["plaintextSize"] == len((work / "plain.bin").read_bytes())
    assert info["segmentSize"] == SEG and info["authenticated"] is True
    assert info["keyId"] == crypto.key_id(crypto.load_key(work / "key"))
    r = run("inspect", str(work / "data.enc"))
    assert r.returncode == 0 and b"keyId" in r.stdout


def _tamper(work: Path, case: str) -> tuple[Path, Path]:
    raw = (work / "data.enc").read_bytes()
    stride, h = SEG + crypto.TAG_SIZE, crypto.HEADER_SIZE
    key = work / "key"
    if case == "wrong_key":
        key = work / "other.key"
        key.write_bytes(crypto.generate_key())
    elif case == "bad_key_file":
        key = work / "bad.key"
        key.write_bytes(b"not a key")
    elif case == "flipped_bit":
        raw = raw[: h + 5] + bytes([raw[h + 5] ^ 1]) + raw[h + 6 :]
    elif case == "truncated":
        raw = raw[: h + 2 * stride]
    elif case == "truncated_mid":
        raw = raw[: h + 2 * stride + 100]
    elif case == "reordered":
        s = [raw[h + i * stride : h + (i + 1) * stride] for i in range(3)]
        raw = raw[:h] + s[1] + s[0] + s[2] + raw[h + 3 * stride :]
    elif case == "appended":
        raw += b"extra"
    elif case == "wrong_version":
        raw = raw[:8] + b"\x09" + raw[9:]
    elif case == "not_encrypted":
        raw = (work / "plain.bin").read_bytes()
    path = work / "tampered.enc"
    path.write_bytes(raw)
    return path, key


CASES = {
    "wrong_key": crypto.WrongKeyError,
    "bad_key_file": crypto.InvalidKeyError,
    "flipped_bit": crypto.CorruptedError,
    "truncated": crypto.TruncatedError,
    "truncated_mid": crypto.TruncatedError,
    "reordered": crypto.ReorderedError,
    "appended": crypto.CorruptedError,
    "wrong_version": crypto.UnsupportedVersionError,
    "not_encrypted": crypto.NotEncryptedError,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("to_stdout", [False, True])
def test_tampered_input_fails_cleanly(work: Path, case: str, to_stdout: bool) -> None:
    path, key = _tamper(work, case)
    out = work / "plain.out"
    r = run("decrypt", "-k", str(key), str(path), "-" if to_stdout else str(out))
    assert r.returncode == CRYPTO_EXIT_CODES[CASES[case]], r.stderr
    err = r.stderr.decode()
    assert err.startswith("sealtune: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and MARKER.decode() not in err
    assert r.stdout == b""  # nothing was streamed before the failure
    assert not out.exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".plain.out")]


def test_encrypt_failure_leaves_no_output(work: Path) -> None:
    r = run("encrypt", "-k", str(work / "key"), str(work / "missing"), str(work / "x.enc"))
    assert r.returncode == 1 and b"No such file" in r.stderr
    assert not (work / "x.enc").exists()


def test_progress_bar_on_request(work: Path) -> None:
    r = run(
        "encrypt", "--progress", "-k", str(work / "key"),
        str(work / "plain.bin"), str(work / "p.enc"),
    )  # fmt: skip
    assert r.returncode == 0 and b"encrypt" in r.stderr and b"100%" in r.stderr


def test_redact_stdin_stdout(tmp_path: Path) -> None:
    text = "mail wang@example.com\n手机 13812345678 id 11010519491231002X\nnothing here\n"
    r = run("redact", stdin=text.encode())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "mail [EMAIL]\n手机 [PHONE] id [CN_ID]\nnothing here\n"
    assert b"EMAIL=1" in r.stderr and b"PHONE=1" in r.stderr and b"CN_ID=1" in r.stderr
    assert b"13812345678" not in r.stderr
    key = tmp_path / "hmac.key"
    key.write_bytes(b"\x01" * 32)
    args = ("redact", "--mode", "pseudonymize", "--key", str(key), "--entities", "PHONE")
    a, b = run(*args, stdin=b"13812345678 wang@example.com\n"), run(*args, stdin=b"13812345678\n")
    assert a.stdout.split()[0] == b.stdout.split()[0]
    assert a.stdout.startswith(b"[PHONE:") and b"wang@example.com" in a.stdout
    bad = run("redact", stdin=b"\xff\xfe bad utf8\n")
    assert bad.returncode == 1 and b"UTF-8" in bad.stderr


def test_cli_start_imports_no_heavy_modules() -> None:
    heavy = ("torch", "transformers", "peft", "opacus", "pydantic")
    code = (
        "import sys; from sealtune_trainer.cli import build_parser; build_parser(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_cli_entity_list_matches_config() -> None:
    from sealtune_api.trainer_config import PII_ENTITIES
    from sealtune_trainer import cli_crypto

    assert cli_crypto.PII_ENTITIES == PII_ENTITIES
