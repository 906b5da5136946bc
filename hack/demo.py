#!/usr/bin/env python3
"""`make demo` entry: the trainer demo (tiny model, encrypted synthetic patient notes,
DP-LoRA with `sealtune train`, audit, report, ciphertext-only check). See
devkit/sealtune_devkit/demo.py; arguments are passed through (e.g. --out demo-out)."""

from __future__ import annotations

import sys
from pathlib import Path

for _d in ("api", "trainer-image", "devkit"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / _d))

from sealtune_devkit.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
