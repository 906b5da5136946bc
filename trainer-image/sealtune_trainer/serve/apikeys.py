"""API keys: creation, salted scrypt hashes in a Secret, constant-time verification.

A key looks like `stk_<id>_<secret>`: the id names the Secret entry holding the key's
hash, so lookup is O(1) and no secret-dependent search happens. Only the hash (scrypt,
per-key random salt) is ever stored. Keys carry 256 bits of entropy, so after one
successful scrypt check the server remembers an HMAC of the key under a per-process
random pepper and verifies later requests with one HMAC instead of one scrypt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_PREFIX = "stk"
KEY_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_HASH_SCHEME = "scrypt"


class ApiKeyError(ValueError):
    """A malformed key, key id or stored hash (messages never contain key material)."""


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: `key` is shown once, `hash_line` goes into the Secret."""

    key_id: str
    key: str
    hash_line: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(secret)


def hash_key(key: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Salted scrypt hash of a full key, as one line `scrypt$n$r$p$salt$hash`."""
    salt = os.urandom(16)
    digest = _scrypt(key.encode("utf-8"), salt, n, r, p)
    return f"{_HASH_SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_hash(key: str, hash_line: str) -> bool:
    """Check a key against a stored hash line with a constant-time comparison."""
    parts = hash_line.strip().split("$")
    if len(parts) != 6 or parts[0] != _HASH_SCHEME:
        raise ApiKeyError("stored API-key hash has an unknown format")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ApiKeyError("stored API-key hash is malformed") from None
    if not (2 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16 and len(expected) == 32):
        raise ApiKeyError("stored API-key hash has out-of-range parameters")
    return hmac.compare_digest(_scrypt(key.encode("utf-8"), salt, n, r, p), expected)


def new_key_id() -> str:
    """A random 12-character key id."""
    return secrets.token_hex(6)


def create_key(key_id: str | None = None) -> NewKey:
    """Create a key (random id unless given) and its hash line."""
    kid = key_id or new_key_id()
    if not KEY_ID_RE.match(kid):
        raise ApiKeyError(
            "key id must be 1-40 characters of lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    key = f"{KEY_PREFIX}_{kid}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=kid, key=key, hash_line=hash_key(key))


def parse_key(key: str) -> str | None:
    """The key id of a well-formed key, or None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    kid, secret = parts[1], parts[2]
    if not KEY_ID_RE.match(kid) or not _SECRET_RE.match(secret):
        return None
    return kid


def secret_manifest(keys: list[NewKey], *, secret_name: str, namespace: str | None = None) -> str:
    """A Kubernetes Secret (YAML) holding only the hashes, one data entry per key id."""
    metadata: dict[str, object] = {
        "name": secret_name,
        "labels": {"app.kubernetes.io/part-of": "sealtune", "sealtune.io/secret-kind": "api-keys"},
    }
    if namespace:
        metadata["namespace"] = namespace
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {k.key_id: k.hash_line for k in keys},
    }
    return yaml.safe_dump(manifest, sort_keys=False)


class KeyStore:
    """API-key hashes read from a mounted Secret directory (one file per key id).

    The directory is re-read at most every `reload_seconds`, so rotating the Secret adds
    and revokes keys without a restart. Verification is thread-safe.
    """

    def __init__(self, directory: str | Path, *, reload_seconds: float = 10.0) -> None:
        self._dir = Path(directory)
        self._reload_seconds = reload_seconds
        self._lock = threading.Lock()
        self._hashes: dict[str, str] = {}
        self._loaded_at = float("-inf")
        self._pepper = os.urandom(32)
        self._verified: dict[str, tuple[str, bytes]] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read every key file; files that are not valid hash lines are ignored."""
        hashes: dict[str, str] = {}
        if self._dir.is_dir():
            for entry in sorted(self._dir.iterdir()):
                # Secret volumes hold `..data` / `..<timestamp>` bookkeeping entries.
                if entry.name.startswith(".") or not KEY_ID_RE.match(entry.name):
                    continue
                try:
                    line = entry.read_text(encoding="ascii").strip()
                except (OSError, UnicodeDecodeError):
                    continue
                if line.startswith(_HASH_SCHEME + "$"):
                    hashes[entry.name] = line
        with self._lock:
            self._hashes = hashes
            self._loaded_at = time.monotonic()
            self._verified = {k: v for k, v in self._verified.items() if hashes.get(k) == v[0]}

    def __len__(self) -> int:
        return len(self._hashes)

    def count(self) -> int:
        """Number of keys, re-reading the directory first when a reload is due."""
        self._maybe_reload()
        return len(self._hashes)

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._loaded_at >= self._reload_seconds:
            self.reload()

    def _mac(self, key: str) -> bytes:
        return hmac.new(self._pepper, key.encode("utf-8"), hashlib.sha256).digest()

    def verify_cached(self, key: str) -> tuple[bool, str | None]:
        """(decided, key id) without scrypt: decided when the key is malformed, unknown, or
        its id was verified before. Cheap enough to run on the event loop."""
        kid = parse_key(key)
        if kid is None:
            return True, None
        if time.monotonic() - self._loaded_at >= self._reload_seconds:
            return False, None  # a reload (file I/O) is due: take the slow path
        with self._lock:
            stored = self._hashes.get(kid)
            cached = self._verified.get(kid)
        if stored is None:
            return True, None
        if cached is None or cached[0] != stored:
            return False, None
        return True, kid if hmac.compare_digest(cached[1], self._mac(key)) else None

    def verify(self, key: str) -> str | None:
        """The key id when `key` is valid, else None. May run scrypt: call off the event loop."""
        kid = parse_key(key)
        if kid is None:
            return None
        self._maybe_reload()
        with self._lock:
            stored = self._hashes.get(kid)
            cached = self._verified.get(kid)
        if stored is None:
            return None
        mac = self._mac(key)
        if cached is not None and cached[0] == stored:
            return kid if hmac.compare_digest(cached[1], mac) else None
        try:
            ok = verify_hash(key, stored)
        except ApiKeyError:
            return None
        if ok:
            with self._lock:
                if self._hashes.get(kid) == stored:
                    self._verified[kid] = (stored, mac)
            return kid
        return None
