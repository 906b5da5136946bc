"""Sealtune's one encrypted file format: segmented streaming AES-256-GCM (STREAM construction).

Why segmented: datasets and weight files can be far larger than memory, and `cryptography`'s
AESGCM refuses a single call of 2 GiB or more. Every file gets its own key (HKDF-SHA256 from
the 32-byte master key and a random salt); each ~1 MiB segment is sealed with a nonce that
binds its index and a last-segment flag, and with the header as associated data, so
truncation, reordering, splicing between files, appending and header edits all fail
authentication. The byte layout and the threat analysis are in docs/encryption-format.md.

Errors name the problem and the file, never plaintext or key material.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import os
import secrets
import struct
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAGIC",
    "VERSION",
    "AppendedDataError",
    "CorruptedError",
    "CryptoError",
    "EncryptedReader",
    "EncryptedWriter",
    "InvalidKeyError",
    "NotEncryptedError",
    "ReorderedError",
    "TruncatedError",
    "UnsupportedVersionError",
    "WrongKeyError",
    "decrypt_file",
    "encrypt_file",
    "generate_key",
    "inspect",
    "key_id",
    "load_key",
    "open_encrypted",
    "read_encrypted_bytes",
    "sha256_file",
    "write_encrypted_bytes",
]

KEY_SIZE = 32
MAGIC = b"SEALTUNE"
VERSION = 1
SUITE_AES256GCM_HKDF_SHA256 = 1
DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 16
MAX_SEGMENT_SIZE = 1 << 30  # far below AESGCM's 2 GiB per-call limit
TAG_SIZE = 16
SALT_SIZE = 32
KCV_SIZE = 16
KEY_ID_SIZE = 8
NONCE_PREFIX_SIZE = 7
MAX_SEGMENTS = 1 << 32  # the nonce's 32-bit segment counter

# magic(8) version(B) suite(B) reserved(H) segment_size(I) key_id(8s) salt(32s) kcv(16s) | length(Q)
_HEADER_FIXED = struct.Struct(">8sBBHI8s32s16s")
_LENGTH = struct.Struct(">Q")
AUTH_HEADER_SIZE = _HEADER_FIXED.size  # 72: associated data of every segment
HEADER_SIZE = AUTH_HEADER_SIZE + _LENGTH.size  # 80: the final segment also binds the length

_INFO_KEY_ID = b"sealtune/v1/key-id"
_INFO_FILE_KEY = b"sealtune/v1/file-key"
_INFO_KCV = b"sealtune/v1/key-check"
_HAS_INTO = hasattr(AESGCM, "encrypt_into")  # newer cryptography: no per-segment allocation
_REORDER_SEARCH_LIMIT = 4096  # segments tried when diagnosing a failed segment

PathLike = str | os.PathLike[str]
Progress = Callable[[int], None]


class CryptoError(Exception):
    """Base of every error of the encrypted format; the message names the problem and file."""


class InvalidKeyError(CryptoError):
    """A key file or key value is not 32 bytes (raw or base64)."""


class WrongKeyError(CryptoError):
    """The file was encrypted under a different master key."""


class CorruptedError(CryptoError):
    """A segment or the header failed authentication (bit flips, splicing, edits)."""


class TruncatedError(CryptoError):
    """The file ends before its final segment."""


class ReorderedError(CryptoError):
    """A segment of this file sits at another segment's position."""


class AppendedDataError(CorruptedError):
    """Bytes follow the authenticated final segment."""


class UnsupportedVersionError(CryptoError):
    """The header's format version or cipher suite is not one this build reads."""


class NotEncryptedError(CryptoError):
    """The file does not start with the Sealtune magic."""


# ---------------------------------------------------------------------------------------------
# keys


def generate_key() -> bytes:
    """32 bytes from the OS CSPRNG: a master key, as stored in a Kubernetes Secret."""
    return secrets.token_bytes(KEY_SIZE)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise InvalidKeyError(f"key must be {KEY_SIZE} bytes, got {size}")


def load_key(path: PathLike) -> bytes:
    """Read a master key file: exactly 32 raw bytes, or their base64 (whitespace ignored)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(4096)
    except OSError as e:
        raise InvalidKeyError(
            f"{name}: cannot read key file ({e.strerror or type(e).__name__})"
        ) from None
    if len(data) == KEY_SIZE:
        return bytes(data)
    compact = b"".join(data.split()).translate(bytes.maketrans(b"-_", b"+/"))
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == KEY_SIZE:
        return raw
    raise InvalidKeyError(
        f"{name}: not a key file: expected {KEY_SIZE} raw bytes or their base64, "
        f"got {len(data)} bytes"
    )


def _hkdf(key: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(key))


def key_id(key: bytes) -> str:
    """A short public identifier of a master key (16 hex chars), safe for logs and headers."""
    _check_key(key)
    return _hkdf(key, None, _INFO_KEY_ID, KEY_ID_SIZE).hex()


def _file_keys(key: bytes, salt: bytes) -> tuple[AESGCM, bytes, bytes]:
    """Per-file AEAD, nonce prefix and key-check value, all derived from (master key, salt)."""
    okm = _hkdf(key, salt, _INFO_FILE_KEY, KEY_SIZE + NONCE_PREFIX_SIZE)
    kcv = _hkdf(key, salt, _INFO_KCV, KCV_SIZE)
    return AESGCM(okm[:KEY_SIZE]), okm[KEY_SIZE:], kcv


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _segments_for(length: int, segment_size: int) -> int:
    """Number of segments for a plaintext: at least one (an empty file has one empty segment)."""
    return max(1, -(-length // segment_size))


def _ciphertext_size(length: int, segment_size: int) -> int:
    return HEADER_SIZE + length + TAG_SIZE * _segments_for(length, segment_size)


# ---------------------------------------------------------------------------------------------
# header


class _Header:
    """Parsed header fields; `auth` is the 72-byte prefix every segment authenticates."""

    __slots__ = (
        "auth",
        "kcv",
        "key_id",
        "length",
        "raw",
        "salt",
        "segment_size",
        "suite",
        "version",
    )

    def __init__(self, raw: bytes) -> None:
        _magic, version, suite, _reserved, seg, kid, salt, kcv = _HEADER_FIXED.unpack_from(raw)
        self.raw = raw
        self.auth = raw[:AUTH_HEADER_SIZE]
        self.version: int = version
        self.suite: int = suite
        self.segment_size: int = seg
        self.key_id: bytes = kid
        self.salt: bytes = salt
        self.kcv: bytes = kcv
        (self.length,) = _LENGTH.unpack_from(raw, AUTH_HEADER_SIZE)

    @staticmethod
    def build(segment_size: int, kid: bytes, salt: bytes, kcv: bytes, length: int) -> bytes:
        fixed = _HEADER_FIXED.pack(
            MAGIC, VERSION, SUITE_AES256GCM_HKDF_SHA256, 0, segment_size, kid, salt, kcv
        )
        return fixed + _LENGTH.pack(length)


def _read_header(name: str, fd: int) -> _Header:
    raw = os.pread(fd, HEADER_SIZE, 0)
    if raw[: len(MAGIC)] != MAGIC[: len(raw)] or not raw:
        raise NotEncryptedError(f"{name}: not a Sealtune encrypted file (bad magic)")
    if len(raw) < len(MAGIC) + 2:
        raise TruncatedError(f"{name}: truncated inside the header ({len(raw)} bytes)")
    version, suite = raw[len(MAGIC)], raw[len(MAGIC) + 1]
    if version != VERSION:
        raise UnsupportedVersionError(
            f"{name}: format version {version} is not supported (this build reads {VERSION})"
        )
    if suite != SUITE_AES256GCM_HKDF_SHA256:
        raise UnsupportedVersionError(f"{name}: cipher suite {suite} is not supported")
    if len(raw) < HEADER_SIZE:
        raise TruncatedError(f"{name}: truncated inside the header ({len(raw)} bytes)")
    hdr = _Header(raw)
    if not MIN_SEGMENT_SIZE <= hdr.segment_size <= MAX_SEGMENT_SIZE:
        raise CorruptedError(
            f"{name}: header corrupted (segment size {hdr.segment_size} out of range)"
        )
    return hdr


# ---------------------------------------------------------------------------------------------
# reading


class _SegmentFile(io.RawIOBase):
    """Raw, seekable plaintext view of an encrypted file; decrypts one segment at a time."""

    def __init__(self, path: PathLike, key: bytes) -> None:
        _check_key(key)
        self.name = os.fspath(path)
        try:
            self._fd = os.open(self.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise CryptoError(
                f"{self.name}: cannot open ({e.strerror or type(e).__name__})"
            ) from None
        try:
            self._setup(key)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise
        super().__init__()

    def _setup(self, key: bytes) -> None:
        name = self.name
        hdr = _read_header(name, self._fd)
        self.header = hdr
        self._aead, self._prefix, kcv = _file_keys(key, hdr.salt)
        if not hmac.compare_digest(kcv, hdr.kcv):
            if hmac.compare_digest(_hkdf(key, None, _INFO_KEY_ID, KEY_ID_SIZE), hdr.key_id):
                raise CorruptedError(
                    f"{name}: header corrupted (key check failed for the right key id)"
                )
            raise WrongKeyError(
                f"{name}: wrong key: file was encrypted with key id {hdr.key_id.hex()}, "
                f"given key has id {key_id(key)}"
            )
        self._seg = hdr.segment_size
        self._stride = self._seg + TAG_SIZE
        file_size = os.fstat(self._fd).st_size
        self.file_size = file_size
        expected = _ciphertext_size(hdr.length, self._seg)
        if expected != file_size:
            self._diagnose_size(file_size, expected)
        self.length: int = hdr.length
        self.segments: int = _segments_for(hdr.length, self._seg)
        if self.segments > MAX_SEGMENTS:
            raise CorruptedError(f"{name}: header corrupted (too many segments)")
        self._cache_index = -1
        # Sized by what the file holds, not by the (not yet authenticated) header alone.
        self._pt_buf = bytearray(min(self._seg, self.length))
        self._ct_buf = bytearray(len(self._pt_buf) + TAG_SIZE)
        self._cache = memoryview(self._pt_buf)[:0]
        self._pos = 0
        # Authenticate the final segment now: it binds the length, so size and EOF are trusted.
        self._segment(self.segments - 1)

    # --- diagnosis (only on failure paths) ---

    def _layout_from_size(self, file_size: int) -> tuple[int, int] | None:
        """(segments, plaintext length) implied by a file size, if the size is well formed."""
        body = file_size - HEADER_SIZE
        if body < TAG_SIZE:
            return None
        n = -(-body // self._stride)
        length = body - n * TAG_SIZE
        if length < 0 or (n > 1 and length <= (n - 1) * self._seg):
            return None
        return n, length

    def _try(self, ct: bytes, index: int, last: bool, length: int | None) -> bool:
        aad = self.header.auth + (_LENGTH.pack(length) if last and length is not None else b"")
        try:
            self._aead.decrypt(_nonce(self._prefix, index, last), ct, aad)
        except InvalidTag:
            return False
        return True

    def _diagnose_size(self, file_size: int, expected: int) -> None:
        name, hdr = self.name, self.header
        layout = self._layout_from_size(file_size)
        if layout is not None:
            n, implied = layout
            off = HEADER_SIZE + (n - 1) * self._stride
            ct = os.pread(self._fd, file_size - off, off)
            if self._try(ct, n - 1, True, implied):
                raise CorruptedError(f"{name}: header corrupted (the length field was altered)")
        # Segment 0 authenticates the header prefix: if it fails, blame corruption, not size.
        one = _segments_for(hdr.length, self._seg) == 1
        size0 = hdr.length + TAG_SIZE if one else self._stride
        if file_size >= HEADER_SIZE + size0:
            ct0 = os.pread(self._fd, size0, HEADER_SIZE)
            if not self._try(ct0, 0, one, hdr.length):
                raise CorruptedError(
                    f"{name}: header or segment 0 failed authentication "
                    f"({file_size} bytes on disk, the header promises {expected})"
                )
        if file_size < expected:
            raise TruncatedError(
                f"{name}: truncated: {file_size} bytes on disk, the header promises {expected}"
            )
        raise AppendedDataError(
            f"{name}: {file_size - expected} unexpected bytes after the final segment "
            f"(the header promises {expected} bytes, plaintext length {hdr.length})"
        )

    def _diagnose_segment(self, index: int, ct: bytes) -> CryptoError:
        name, n = self.name, self.segments
        last = index == n - 1
        if last and self._try(ct, index, False, None):
            return TruncatedError(f"{name}: truncated: segment {index} is not the final segment")
        candidates = [j for j in range(n) if j != index][:_REORDER_SEARCH_LIMIT]
        for j in candidates:
            for flag in (False, True):
                if self._try(ct, j, flag, self.length if flag else None):
                    return ReorderedError(
                        f"{name}: segments reordered: position {index} holds segment {j}"
                    )
        return CorruptedError(
            f"{name}: segment {index} failed authentication "
            "(corrupted, edited header, or spliced from another file)"
        )

    # --- segment access ---

    def _segment(self, index: int) -> memoryview:
        """Plaintext of one authenticated segment, decrypted into a reused buffer."""
        if index == self._cache_index:
            return self._cache
        last = index == self.segments - 1
        off = HEADER_SIZE + index * self._stride
        size = (self.length - index * self._seg) + TAG_SIZE if last else self._stride
        ct = memoryview(self._ct_buf)[:size]
        if os.preadv(self._fd, [ct], off) != size:
            raise TruncatedError(f"{self.name}: truncated: segment {index} is incomplete")
        aad = self.header.raw if last else self.header.auth
        nonce = _nonce(self._prefix, index, last)
        self._cache_index = -1
        pt = memoryview(self._pt_buf)[: size - TAG_SIZE]
        try:
            if _HAS_INTO:
                self._aead.decrypt_into(nonce, ct, aad, pt)
            else:
                pt[:] = self._aead.decrypt(nonce, bytes(ct), aad)
        except InvalidTag:
            pt[:] = bytes(len(pt))  # never keep unauthenticated plaintext around
            raise self._diagnose_segment(index, bytes(ct)) from None
        self._cache_index, self._cache = index, pt
        return pt

    def verify(self) -> None:
        """Authenticate every segment (constant memory)."""
        for i in range(self.segments):
            self._segment(i)

    # --- RawIOBase ---

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.length + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        """Copy from the current segment only, so a read never decrypts beyond what it needs."""
        if self._pos >= self.length:
            return 0
        out = memoryview(buffer).cast("B")
        index, off = divmod(self._pos, self._seg)
        seg = self._segment(index)
        n = min(len(out), len(seg) - off)
        out[:n] = seg[off : off + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytearray(max(0, self.length - self._pos))
        view = memoryview(out)
        done = 0
        while n := self.readinto(view[done:]):
            done += n
        return bytes(out[:done])

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1
        if hasattr(self, "_pt_buf"):
            self._cache_index = -1
            self._cache.release()
            self._pt_buf[:] = bytes(len(self._pt_buf))  # drop plaintext from memory
        super().close()


class EncryptedReader(io.BufferedReader):
    """Buffered, seekable plaintext reader returned by `open_encrypted`."""

    raw: _SegmentFile

    @property
    def plaintext_size(self) -> int:
        """Authenticated plaintext length in bytes."""
        return self.raw.length

    @property
    def segment_size(self) -> int:
        return self.raw.header.segment_size

    @property
    def segment_count(self) -> int:
        return self.raw.segments

    def verify(self) -> None:
        """Authenticate every segment without returning plaintext."""
        self.raw.verify()


def open_encrypted(path: PathLike, key: bytes) -> EncryptedReader:
    """Open an encrypted file for reading plaintext lazily, segment by segment (seekable).

    The header, key and final segment (which binds the plaintext length) are checked on open;
    every other segment is authenticated when first read.
    """
    raw = _SegmentFile(path, key)
    return EncryptedReader(
        raw, buffer_size=max(io.DEFAULT_BUFFER_SIZE, min(raw.header.segment_size, 1 << 20))
    )


# ---------------------------------------------------------------------------------------------
# writing


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class EncryptedWriter(io.BufferedIOBase):
    """Write plaintext, publish ciphertext atomically at `close()`.

    Data goes to a temporary file in the destination directory; a successful close seals the
    final segment, patches the length into the header, fsyncs and `os.replace`s it into place.
    An exception inside the `with` block, `abort()`, or garbage collection of an unclosed
    writer removes the temporary file and leaves nothing behind. When wrapping it (e.g. in
    `io.TextIOWrapper`), keep the writer's own `with` outermost and `detach()` the wrapper:
    closing a wrapper closes, and so publishes, the writer.
    """

    def __init__(
        self, path: PathLike, key: bytes, *, segment_size: int = DEFAULT_SEGMENT_SIZE
    ) -> None:
        super().__init__()
        _check_key(key)
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(f"segment_size must be in [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]")
        self.name = os.fspath(path)
        self._seg = segment_size
        salt = secrets.token_bytes(SALT_SIZE)
        self._aead, self._prefix, kcv = _file_keys(key, salt)
        kid = _hkdf(key, None, _INFO_KEY_ID, KEY_ID_SIZE)
        self._auth = _Header.build(segment_size, kid, salt, kcv, 0)[:AUTH_HEADER_SIZE]
        directory = os.path.dirname(os.path.abspath(self.name))
        self._dir = directory
        self._tmp: str | None = None
        self._file: BinaryIO | None = None
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(self.name)}.", suffix=".tmp", dir=directory
        )
        self._tmp = tmp
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._buf = bytearray()
        self._out = bytearray(segment_size + TAG_SIZE)
        self._index = 0
        self._length = 0
        try:
            _write_all(self._file, self._auth + _LENGTH.pack(0))
        except BaseException:
            self.abort()
            raise

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        assert self._file is not None
        if self._index >= MAX_SEGMENTS:
            raise CryptoError(f"{self.name}: too many segments for one file")
        aad = self._auth + _LENGTH.pack(self._length) if last else self._auth
        nonce = _nonce(self._prefix, self._index, last)
        if _HAS_INTO:
            out = memoryview(self._out)[: len(data) + TAG_SIZE]
            self._aead.encrypt_into(nonce, data, aad, out)
            _write_all(self._file, out)
        else:
            _write_all(self._file, self._aead.encrypt(nonce, bytes(data), aad))
        self._index += 1

    def write(self, data: Any) -> int:
        """Buffer up to one segment; seal a segment only once more data shows it is not last."""
        if self.closed or self._file is None:
            raise ValueError("write to a closed EncryptedWriter")
        view = memoryview(data).cast("B")
        n = len(view)
        if not n:
            return 0
        self._length += n
        seg = self._seg
        pos = 0
        try:
            if self._buf:
                pos = min(seg - len(self._buf), n)
                self._buf += view[:pos]
                if pos == n:
                    return n  # the buffered segment may still be the last one
                self._emit(self._buf, last=False)  # full, and more data follows
                self._buf = bytearray()
            while n - pos > seg:  # whole segments straight from the caller's buffer
                self._emit(view[pos : pos + seg], last=False)
                pos += seg
            self._buf = bytearray(view[pos:])
        except BaseException:
            self.abort()
            raise
        return n

    def flush(self) -> None:
        """Whole segments are already written; the tail is sealed only by `close()`."""

    def close(self) -> None:
        """Seal the final segment and publish the file atomically."""
        if self.closed:
            return
        try:
            if self._file is None or self._tmp is None:
                return
            self._emit(self._buf, last=True)
            self._buf = bytearray()
            self._file.seek(AUTH_HEADER_SIZE)
            _write_all(self._file, _LENGTH.pack(self._length))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.name)
            self._tmp = None
            _fsync_dir(self._dir)
        except BaseException:
            self.abort()
            raise
        finally:
            super().close()

    def abort(self) -> None:
        """Discard everything written; no output file is left."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None
        self._buf = bytearray()
        if not self.closed:
            super().close()

    @property
    def bytes_written(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._length

    def __enter__(self) -> EncryptedWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Never publish on garbage collection: an unclosed writer is an incomplete one.
        with contextlib.suppress(Exception):
            self.abort()


# ---------------------------------------------------------------------------------------------
# file helpers


def _write_all(f: BinaryIO, data: bytes | memoryview) -> None:
    """Write everything (a raw file may accept less than asked)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:] if n is not None else view[len(view) :]


def _copy(
    src: io.RawIOBase | io.BufferedIOBase, dst: Any, chunk: int, progress: Progress | None
) -> None:
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        n = src.readinto(view)
        if not n:
            break
        if isinstance(dst, EncryptedWriter):
            dst.write(view[:n])
        else:
            _write_all(dst, view[:n])
        if progress is not None:
            progress(n)


def encrypt_file(
    src: PathLike,
    dst: PathLike,
    key: bytes,
    *,
    progress: Progress | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> None:
    """Encrypt `src` to `dst` (published atomically); `progress(n)` gets byte increments."""
    name = os.fspath(src)
    try:
        fin = open(name, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as e:
        raise CryptoError(f"{name}: cannot open ({e.strerror or type(e).__name__})") from None
    with fin, EncryptedWriter(dst, key, segment_size=segment_size) as w:
        _copy(fin, w, segment_size, progress)


def _publish_plaintext(reader: EncryptedReader, dst: PathLike, progress: Progress | None) -> None:
    name = os.fspath(dst)
    directory = os.path.dirname(os.path.abspath(name))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(name)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            _copy(reader, out, max(reader.segment_size, 1 << 16), progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def decrypt_file(
    src: PathLike, dst: PathLike, key: bytes, *, progress: Progress | None = None
) -> None:
    """Decrypt `src` to `dst`; `dst` appears only if every segment authenticated."""
    with open_encrypted(src, key) as reader:
        _publish_plaintext(reader, dst, progress)


def write_encrypted_bytes(path: PathLike, data: bytes, key: bytes) -> str:
    """Encrypt `data` to `path` atomically; return the sha256 hex of the ciphertext file."""
    with EncryptedWriter(path, key) as w:
        w.write(data)
    return sha256_file(path)


def read_encrypted_bytes(path: PathLike, key: bytes) -> bytes:
    """Decrypt a whole (small) file into memory."""
    with open_encrypted(path, key) as r:
        return r.read()


def sha256_file(path: PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(os.fspath(path), "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def inspect(path: PathLike) -> dict[str, Any]:
    """Header fields of an encrypted file, readable without the key (nothing is authenticated)."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError as e:
        raise CryptoError(f"{name}: cannot open ({e.strerror or type(e).__name__})") from None
    try:
        hdr = _read_header(name, fd)
        file_size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    expected = _ciphertext_size(hdr.length, hdr.segment_size)
    return {
        "path": name,
        "format": "sealtune-stream",
        "version": hdr.version,
        "cipher": "AES-256-GCM, HKDF-SHA256 per-file key",
        "keyId": hdr.key_id.hex(),
        "segmentSize": hdr.segment_size,
        "segmentCount": _segments_for(hdr.length, hdr.segment_size),
        "plaintextSize": hdr.length,
        "fileSize": file_size,
        "sizeConsistent": expected == file_size,
        "authenticated": False,
    }
