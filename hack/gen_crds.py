#!/usr/bin/env python3
"""Write the CRDs generated from the spec models into crds/ and charts/sealtune/crds/.

Usage: python hack/gen_crds.py [--check]   (--check: exit 1 if any file would change)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sealtune_api.crdgen import rendered_files

ROOT = Path(__file__).resolve().parent.parent
TARGETS = [ROOT / "crds", ROOT / "charts" / "sealtune" / "crds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args()
    stale = []
    for target in TARGETS:
        for name, text in rendered_files().items():
            path = target / name
            if path.exists() and path.read_text() == text:
                continue
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
