"""The encrypted file format: round trips, random access, atomic publish, every tamper case."""

from __future__ import annotations

import base64
import io
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealtune_trainer import crypto
from sealtune_trainer.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    AppendedDataError,
    CorruptedError,
    CryptoError,
    EncryptedWriter,
    InvalidKeyError,
    NotEncryptedError,
    ReorderedError,
    TruncatedError,
    UnsupportedVersionError,
    WrongKeyError,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SEG = 64
STRIDE = SEG + TAG_SIZE
PLAIN = bytes((i * 7 + 3) % 251 for i in range(SEG * 5 + 10))  # 6 segments, last partial


def _encrypt(path: Path, data: bytes, key: bytes = KEY, seg: int = SEG) -> bytes:
    with EncryptedWriter(path, key, segment_size=seg) as w:
        w.write(data)
    return path.read_bytes()


def _segments(raw: bytes) -> list[bytes]:
    body = raw[HEADER_SIZE:]
    return [body[i : i + STRIDE] for i in range(0, len(body), STRIDE)]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=700),
        st.integers(0, 8).map(lambda k: bytes([k]) * (SEG * k)),  # empty and exact multiples
    ),
    chunks=st.lists(st.integers(1, 150), max_size=12),
)
def test_round_trip_across_segment_boundaries(
    tmp_path: Path, data: bytes, chunks: list[int]
) -> None:
    path = tmp_path / "rt.enc"
    with EncryptedWriter(path, KEY, segment_size=SEG) as w:
        pos = 0
        for c in chunks:  # irregular write sizes straddle segment boundaries
            w.write(data[pos : pos + c])
            pos += c
        w.write(data[pos:])
    assert crypto.read_encrypted_bytes(path, KEY) == data
    n_seg = max(1, -(-len(data) // SEG))
    assert path.stat().st_size == HEADER_SIZE + len(data) + TAG_SIZE * n_seg
    info = crypto.inspect(path)
    assert (info["plaintextSize"], info["segmentCount"], info["segmentSize"]) == (
        len(data),
        n_seg,
        SEG,
    )
    with crypto.open_encrypted(path, KEY) as r:
        assert r.plaintext_size == len(data)
        assert r.read() == data


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reads=st.lists(st.tuples(st.integers(0, len(PLAIN) + 20), st.integers(0, 200)), max_size=15))
def test_random_access_matches_plaintext(tmp_path: Path, reads: list[tuple[int, int]]) -> None:
    path = tmp_path / "ra.enc"
    if not path.exists():
        _encrypt(path, PLAIN)
    with crypto.open_encrypted(path, KEY) as r:
        assert r.seekable() and r.readable()
        for off, n in reads:
            assert r.seek(off) == off
            got = r.read(n)
            assert got == PLAIN[off : off + n]
            assert r.tell() == off + len(got)
        r.seek(-5, io.SEEK_END)
        assert r.read() == PLAIN[-5:]


def test_default_segment_size_round_trip_and_text_io(tmp_path: Path) -> None:
    lines = [f'{{"i": {i}, "text": "record {i}"}}' for i in range(40000)]
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) > crypto.DEFAULT_SEGMENT_SIZE  # spans two 1 MiB segments
    path = tmp_path / "big.jsonl.enc"
    digest = crypto.write_encrypted_bytes(path, data, KEY)
    assert digest == crypto.sha256_file(path)
    with crypto.open_encrypted(path, KEY) as r, io.TextIOWrapper(r, encoding="utf-8") as t:
        got = [line.rstrip("\n") for line in t]
    assert got == lines


def test_file_and_helpers_round_trip(tmp_path: Path) -> None:
    src, enc, out = tmp_path / "a.bin", tmp_path / "a.enc", tmp_path / "a.out"
    src.write_bytes(os.urandom(300_000))
    seen: list[int] = []
    crypto.encrypt_file(src, enc, KEY, progress=seen.append, segment_size=4096)
    assert sum(seen) == 300_000
    assert src.read_bytes() not in enc.read_bytes()
    crypto.decrypt_file(enc, out, KEY)
    assert out.read_bytes() == src.read_bytes()


def test_each_file_gets_fresh_salt_and_key_id_is_stable(tmp_path: Path) -> None:
    a = _encrypt(tmp_path / "a.enc", PLAIN)
    b = _encrypt(tmp_path / "b.enc", PLAIN)
    assert a[HEADER_SIZE:] != b[HEADER_SIZE:]  # same plaintext, different ciphertext
    assert crypto.inspect(tmp_path / "a.enc")["keyId"] == crypto.key_id(KEY)
    assert crypto.key_id(KEY) != crypto.key_id(OTHER_KEY)
    assert len(crypto.key_id(KEY)) == 16 and KEY.hex() not in a.hex()


def test_writer_leaves_nothing_on_exception(tmp_path: Path) -> None:
    path = tmp_path / "x.enc"
    with pytest.raises(RuntimeError), EncryptedWriter(path, KEY, segment_size=SEG) as w:
        w.write(PLAIN)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unclosed_writer_is_never_published(tmp_path: Path) -> None:
    w = EncryptedWriter(tmp_path / "y.enc", KEY, segment_size=SEG)
    w.write(PLAIN)
    del w
    import gc

    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "z.enc"
    _encrypt(path, b"old")
    w = EncryptedWriter(path, KEY, segment_size=SEG)
    w.write(b"new contents")
    assert crypto.read_encrypted_bytes(path, KEY) == b"old"  # old version until close
    w.close()
    assert crypto.read_encrypted_bytes(path, KEY) == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.enc"]


# --- tamper cases: each has its own error ------------------------------------------------


def _tampered(tmp_path: Path, case: str) -> tuple[Path, bytes]:
    raw = _encrypt(tmp_path / "orig.enc", PLAIN)
    segs = _segments(raw)
    head = raw[:HEADER_SIZE]
    key = KEY
    if case == "wrong_key":
        key = OTHER_KEY
    elif case == "flipped_bit":
        i = HEADER_SIZE + 2 * STRIDE + 10
        raw = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
    elif case == "truncated_boundary":
        raw = head + b"".join(segs[:3])
    elif case == "truncated_mid_segment":
        raw = raw[: HEADER_SIZE + 3 * STRIDE + 17]
    elif case == "reordered":
        raw = head + segs[0] + segs[2] + segs[1] + b"".join(segs[3:])
    elif case == "spliced":
        other = _encrypt(tmp_path / "other.enc", PLAIN)
        raw = head + segs[0] + _segments(other)[1] + b"".join(segs[2:])
    elif case == "appended":
        raw = raw + b"\x00" * 5
    elif case == "appended_segment":
        raw = raw + segs[1]
    elif case == "wrong_version":
        raw = raw[:8] + b"\x02" + raw[9:]
    elif case == "not_encrypted":
        raw = PLAIN
    elif case == "length_field_edited":
        raw = head[:-1] + bytes([head[-1] ^ 0x04]) + raw[HEADER_SIZE:]
    elif case == "segment_size_edited":
        raw = raw[:15] + bytes([raw[15] ^ 0x01]) + raw[16:]
    elif case == "salt_edited":
        raw = raw[:30] + bytes([raw[30] ^ 0x80]) + raw[31:]
    elif case == "header_truncated":
        raw = raw[:40]
    path = tmp_path / "t.enc"
    path.write_bytes(raw)
    return path, key


TAMPER_CASES: dict[str, type[CryptoError]] = {
    "wrong_key": WrongKeyError,
    "flipped_bit": CorruptedError,
    "truncated_boundary": TruncatedError,
    "truncated_mid_segment": TruncatedError,
    "reordered": ReorderedError,
    "spliced": CorruptedError,
    "appended": AppendedDataError,
    "appended_segment": AppendedDataError,
    "wrong_version": UnsupportedVersionError,
    "not_encrypted": NotEncryptedError,
    "length_field_edited": CorruptedError,
    "segment_size_edited": CorruptedError,
    "salt_edited": CorruptedError,
    "header_truncated": TruncatedError,
}


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_tamper_case_has_its_own_error(tmp_path: Path, case: str) -> None:
    path, key = _tampered(tmp_path, case)
    expected = TAMPER_CASES[case]
    # open checks header, key, size and final segment; reading checks the rest
    with pytest.raises(CryptoError) as exc, crypto.open_encrypted(path, key) as r:
        r.read()
    assert type(exc.value) is expected, f"{case}: {type(exc.value).__name__}: {exc.value}"
    msg = str(exc.value)
    assert str(path) in msg
    assert KEY.hex() not in msg and OTHER_KEY.hex() not in msg
    assert PLAIN[:16].hex() not in msg
    out = tmp_path / "plain.out"
    with pytest.raises(expected):
        crypto.decrypt_file(path, out, key)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".plain.out")]


def test_reorder_is_detected_on_random_access(tmp_path: Path) -> None:
    path, key = _tampered(tmp_path, "reordered")
    with crypto.open_encrypted(path, key) as r:
        r.seek(0)
        assert r.read(SEG) == PLAIN[:SEG]  # segment 0 untouched
        r.seek(SEG)
        with pytest.raises(ReorderedError, match="position 1 holds segment 2"):
            r.read(1)


def test_verify_catches_corruption_without_reading(tmp_path: Path) -> None:
    path, key = _tampered(tmp_path, "flipped_bit")
    with crypto.open_encrypted(path, key) as r, pytest.raises(CorruptedError, match="segment 2"):
        r.verify()


def test_inspect_needs_no_key_and_flags_size_mismatch(tmp_path: Path) -> None:
    path, _ = _tampered(tmp_path, "truncated_boundary")
    info = crypto.inspect(path)
    assert info["version"] == 1 and info["keyId"] == crypto.key_id(KEY)
    assert info["sizeConsistent"] is False
    struct.pack(">Q", info["plaintextSize"])  # a proper unsigned length
    with pytest.raises(NotEncryptedError):
        (tmp_path / "p").write_bytes(b"plain text file")
        crypto.inspect(tmp_path / "p")


# --- keys ---------------------------------------------------------------------------------


def test_load_key_raw_and_base64(tmp_path: Path) -> None:
    raw, b64, url = tmp_path / "raw", tmp_path / "b64", tmp_path / "url"
    key = bytes([0xFB, 0xFF] * 16)
    raw.write_bytes(key)
    b64.write_text("  " + base64.b64encode(key).decode() + "\n")
    url.write_text(base64.urlsafe_b64encode(key).decode())
    assert crypto.load_key(raw) == crypto.load_key(b64) == crypto.load_key(url) == key
    assert len(crypto.generate_key()) == crypto.KEY_SIZE
    assert crypto.generate_key() != crypto.generate_key()


@pytest.mark.parametrize(
    "content", [b"", b"short", b"x" * 31, b"x" * 33, base64.b64encode(b"k" * 20), b"not base64 !!"]
)
def test_load_key_rejects_bad_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "k"
    p.write_bytes(content)
    with pytest.raises(InvalidKeyError, match="not a key file"):
        crypto.load_key(p)
    with pytest.raises(InvalidKeyError, match="cannot read"):
        crypto.load_key(tmp_path / "missing")


def test_writer_rejects_bad_key_and_segment_size(tmp_path: Path) -> None:
    with pytest.raises(InvalidKeyError):
        EncryptedWriter(tmp_path / "a", b"k" * 16)
    with pytest.raises(ValueError):
        EncryptedWriter(tmp_path / "a", KEY, segment_size=8)
    assert list(tmp_path.iterdir()) == []


def test_allocating_fallback_reads_and_writes_the_same_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older `cryptography` without encrypt_into/decrypt_into produces identical files."""
    fast = tmp_path / "fast.enc"
    _encrypt(fast, PLAIN)
    monkeypatch.setattr(crypto, "_HAS_INTO", False)
    slow = tmp_path / "slow.enc"
    _encrypt(slow, PLAIN)
    assert crypto.read_encrypted_bytes(fast, KEY) == crypto.read_encrypted_bytes(slow, KEY) == PLAIN
    path, key = _tampered(tmp_path, "flipped_bit")
    with pytest.raises(CorruptedError), crypto.open_encrypted(path, key) as r:
        r.read()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_or_cut_is_rejected(tmp_path: Path, data: st.DataObject) -> None:
    """No edit of any byte, and no truncation at any length, ever yields plaintext."""
    orig = tmp_path / "orig.enc"
    if not orig.exists():
        _encrypt(orig, PLAIN)
    raw = orig.read_bytes()
    if data.draw(st.booleans(), label="cut"):
        tampered = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        i = data.draw(st.integers(0, len(raw) - 1), label="offset")
        delta = data.draw(st.integers(1, 255), label="xor")
        tampered = raw[:i] + bytes([raw[i] ^ delta]) + raw[i + 1 :]
    path = tmp_path / "t.enc"
    path.write_bytes(tampered)
    with pytest.raises(CryptoError), crypto.open_encrypted(path, KEY) as r:
        r.read()
