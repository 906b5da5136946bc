#!/usr/bin/env python3
"""`make demo` entry: the trainer demo (tiny model, encrypted synthetic patient notes,
DP-LoRA with `sealtune train`, audit, report, ciphertext-only check). See
sealtune_trainer/demo.py; arguments are passed through (e.g. --out demo-out)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer-image"))

from sealtune_trainer.demo import main

if __name__ == "__main__":
    sys.exit(main())
