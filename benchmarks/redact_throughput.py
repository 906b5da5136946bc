"""PII redaction: throughput on one core and recall/precision on the labelled corpus.

Texts (all generated, seeded, by `sealtune_devkit.pii_corpus`):
  * notes:  clinical-note-like prose with about 1 PII value per KiB (the realistic case);
  * dense:  the labelled corpus itself, about one PII value per 130 bytes and a digit in every
            fourth byte (the worst case for a validating scanner);
  * prose:  the same notes without any PII (the scan-only floor).
MB/s is reported on CPU time of this process (one thread) and on wall-clock time.
Target: at least 50 MB/s on one core on realistic text.

If `presidio-analyzer` is importable, its pattern recognizers (e-mail, phone, credit card,
IBAN, IP, US SSN; it has no Chinese ID recognizer) run on the same corpus beside ours. It is
not a project dependency; install it in a separate virtualenv and run this script with that
interpreter (plus pydantic and pyyaml) to compare.

    python benchmarks/redact_throughput.py [--mib 16] [--records 4000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _d in ("api", "trainer-image", "devkit"):
    sys.path.insert(0, str(ROOT / _d))

from sealtune_api.trainer_config import PII_ENTITIES  # noqa: E402
from sealtune_devkit import pii_corpus  # noqa: E402
from sealtune_trainer.redact import Redactor, Span  # noqa: E402

# Presidio entity -> ours
PRESIDIO_MAP = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "BANK_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
}


def throughput(fn: Callable[[str], object], text: str, repeat: int = 3) -> tuple[float, float]:
    """(MB/s on process CPU time, MB/s wall), best of `repeat`."""
    size = len(text.encode()) / 1e6
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn(text)
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return size / best_cpu, size / best_wall


def presidio_finder() -> Callable[[str], list[Span]] | None:
    """Presidio's pattern recognizers as a `find` function, or None if not installed."""
    # tldextract (used by Presidio's e-mail check) tries to download the public suffix list,
    # fails offline, falls back to its bundled copy, and logs a traceback: keep that quiet.
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)
    try:
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )
    except Exception as e:  # ImportError, or a broken optional dependency
        print(f"note: presidio-analyzer not available ({type(e).__name__}); skipping it")
        return None
    recognizers = [
        EmailRecognizer(),
        # Presidio's phone recognizer uses `phonenumbers`; CN covers Chinese mobiles.
        PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR", "JP", "IN", "AU", "CN")),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UsSsnRecognizer(),
    ]

    def find(text: str) -> list[Span]:
        spans: list[Span] = []
        for rec in recognizers:
            for r in rec.analyze(text, rec.supported_entities, None):
                ours = PRESIDIO_MAP.get(r.entity_type)
                if ours and r.score >= 0.3:
                    spans.append(Span(r.start, r.end, ours))
        spans.sort()
        kept: list[Span] = []
        for s in spans:  # keep the leftmost-longest, like ours
            if kept and s.start < kept[-1].end:
                if s.end - s.start > kept[-1].end - kept[-1].start and s.start == kept[-1].start:
                    kept[-1] = s
                continue
            kept.append(s)
        return kept

    return find


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=16, help="size of the notes text")
    ap.add_argument("--records", type=int, default=4000, help="labelled corpus records")
    ap.add_argument("--json", help="also write results as JSON here")
    args = ap.parse_args()

    notes = pii_corpus.notes_text(args.mib << 20, seed=3, pii_per_kb=1.0)
    prose = pii_corpus.notes_text(args.mib << 20, seed=3, pii_per_kb=0.0)
    corpus = pii_corpus.generate_corpus(args.records, seed=5)
    dense = "\n".join(r.text for r in corpus)
    res: dict[str, Any] = {"throughput": {}, "quality": {}}

    print(f"\nThroughput (one thread), Sealtune Redactor, mask mode, all {len(PII_ENTITIES)} types")
    print(f"{'text':<34} {'MB':>6} {'MB/s cpu':>9} {'MB/s wall':>10}")
    for name, text in (("notes, ~1 PII/KiB", notes), ("prose, no PII", prose),
                       ("dense labelled corpus", dense)):  # fmt: skip
        cpu, wall = throughput(Redactor().redact, text)
        res["throughput"][name] = {"mb": len(text.encode()) / 1e6, "cpu": cpu, "wall": wall}
        print(f"{name:<34} {len(text.encode()) / 1e6:>6.1f} {cpu:>9.1f} {wall:>10.1f}")

    ours = pii_corpus.evaluate(Redactor(), corpus)
    presidio = presidio_finder()
    theirs = pii_corpus.score((r, presidio(r.text)) for r in corpus) if presidio else None
    print(f"\nQuality on {args.records} labelled records (exact span match)")
    head = f"{'entity':<11} {'n':>5} {'recall':>7} {'precision':>9}"
    print(head + (f" | {'presidio recall':>15} {'precision':>9}" if theirs else ""))
    for e in PII_ENTITIES:
        n = ours.tp[e] + ours.fn[e]
        row = f"{e:<11} {n:>5} {ours.recall(e):>7.4f} {ours.precision(e):>9.4f}"
        q: dict[str, Any] = {"n": n, "recall": ours.recall(e), "precision": ours.precision(e)}
        if theirs:
            if e == "CN_ID":
                row += f" | {'(no recognizer)':>15} {'-':>9}"
            else:
                row += f" | {theirs.recall(e):>15.4f} {theirs.precision(e):>9.4f}"
                q["presidio"] = {"recall": theirs.recall(e), "precision": theirs.precision(e)}
        res["quality"][e] = q
        print(row)
    r_all, p_all = ours.overall()
    print(f"{'overall':<11} {'':>5} {r_all:>7.4f} {p_all:>9.4f}")
    negatives = pii_corpus.checksum_failures(2000, seed=9)
    r = Redactor()
    false_hits = sum(len(r.find(t)) for t in negatives)
    res["checksum_failure_detections"] = false_hits
    print(f"detections on 2000 checksum-failing look-alikes: {false_hits}")
    if presidio:
        cpu, wall = throughput(presidio, notes[: 1 << 20], repeat=1)
        res["presidio_throughput_notes"] = {"cpu": cpu, "wall": wall}
        ours_cpu = res["throughput"]["notes, ~1 PII/KiB"]["cpu"]
        print(f"presidio pattern recognizers on notes: {cpu:.2f} MB/s cpu "
              f"(Sealtune / Presidio: {ours_cpu / cpu:.0f}x)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
