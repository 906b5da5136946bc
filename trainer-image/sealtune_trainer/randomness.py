"""Secret randomness: every random choice that protects privacy, keyed by a per-job secret.

DP-SGD's guarantee holds only if the adversary cannot predict the noise or the sampling.
A seed taken from the spec (`training.seed`, default 42) makes both public: anyone who
reads the FineTuneJob can regenerate the noise and subtract it from the released adapter
(privacy review, 2026-11: 12/12 replay attacks matched). So the Poisson draws, the
Gaussian noise, the held-out split, the canaries (secrets, positions, inclusion coins) and
any audit subsampling all derive from one 256-bit secret:

    secret = HKDF-SHA256(per-job checkpoint key, salt="sealtune-dp-randomness-v1", info=uid)

The checkpoint key is a per-job Secret only the trainer pod mounts (on a laptop,
`sealtune train` creates it in the local secrets root). Each purpose gets its own stream,
`HMAC-SHA256(secret, label)`, and torch generators are re-seeded from it every step, so
the state an attacker would have to recover is a fresh 64-bit secret per step, and a
resumed run reproduces the same draws bit for bit. `training.seed` keeps governing public
choices only (LoRA initialisation, the order of a non-DP epoch).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    import torch

_SALT = b"sealtune-dp-randomness-v1"


class SecretRandomness:
    """Independent, secret random streams of one job, addressed by a label."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the randomness secret must be at least 32 bytes")
        self._secret = bytes(secret)

    @classmethod
    def derive(cls, key: bytes, job_uid: str) -> SecretRandomness:
        """The job's secret from its per-job key (never from anything in the spec)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=job_uid.encode())
        return cls(hkdf.derive(key))

    def __repr__(self) -> str:  # never print the secret
        return "SecretRandomness(<secret>)"

    def digest(self, label: str, data: bytes = b"") -> bytes:
        """HMAC-SHA256 of `data` under the secret, domain-separated by `label`."""
        msg = label.encode() + b"\x00" + data
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def seed(self, label: str) -> int:
        """A 64-bit seed for `label` (e.g. "noise/17": the noise of step 17)."""
        return int.from_bytes(self.digest(label)[:8], "big")

    def uniform(self, label: str, data: bytes) -> float:
        """A uniform number in [0, 1) that depends only on (secret, label, data)."""
        return int.from_bytes(self.digest(label, data)[:8], "big") / 2.0**64

    def rng(self, label: str) -> random.Random:
        """A Python RNG seeded with 256 secret bits (canary secrets, positions, subsamples)."""
        return random.Random(int.from_bytes(self.digest(label), "big"))

    def generator(self, label: str, device: str | torch.device = "cpu") -> torch.Generator:
        import torch

        return torch.Generator(device=device).manual_seed(self.seed(label))

    def reseed(self, gen: torch.Generator, label: str) -> torch.Generator:
        """Re-seed `gen` in place for `label` (one label per step keeps resume exact)."""
        return gen.manual_seed(self.seed(label))
