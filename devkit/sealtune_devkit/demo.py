"""`python -m sealtune_devkit.demo`: the whole trainer story on a laptop CPU in minutes.

1. generate a tiny seeded Llama-shaped model + tokenizer (nothing is downloaded),
2. generate synthetic, fake but checksum-valid patient notes (names, phones, Chinese
   resident IDs), encrypt them and delete the plaintext,
3. write a FineTuneJob YAML and run it with `sealtune train` (the real code path:
   decrypt in memory, redact, DP-LoRA, encrypted checkpoints, audit, encrypted adapter),
4. print the report and prove the output and checkpoint directories hold only
   ciphertext (every file starts with the format's magic; no plaintext marker inside).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SURNAMES = [
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Chen",
    "Yang",
    "Huang",
    "Zhao",
    "Wu",
    "Zhou",
    "Smith",
    "Garcia",
    "Müller",
    "Rossi",
    "Tanaka",
    "Kim",
    "Nguyen",
    "Haddad",
]
GIVEN = [
    "Wei",
    "Fang",
    "Min",
    "Jing",
    "Lei",
    "Yan",
    "Anna",
    "Omar",
    "Sofia",
    "Lucas",
    "Mei",
    "Hao",
    "Yuki",
    "Elena",
    "Ravi",
    "Chen",
    "Ming",
    "Lin",
]
CONDITIONS = [
    "type 2 diabetes",
    "asthma",
    "hypertension",
    "a fractured wrist",
    "pneumonia",
    "migraine",
    "an allergic rash",
    "acute bronchitis",
]
PLANS = [
    "metformin twice daily and a diet review",
    "an inhaler and rest",
    "amlodipine daily and blood pressure checks",
    "a cast for six weeks",
    "antibiotics for seven days",
    "rest, water and pain relief",
    "antihistamines and a follow up visit",
    "cough syrup and rest",
]

# Marker strings that must never appear in any file under the output/checkpoint dirs.
PLAINTEXT_MARKERS = ("Patient", "phone", "instruction", "safetensors", "lora_A", "adapter_config")


def make_patient_notes(n: int, seed: int) -> list[dict[str, str]]:
    """Alpaca records: a clinic note with name, phone and Chinese ID -> a summary."""
    from sealtune_devkit.pii_corpus import cn_id, phone

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = f"{rng.choice(GIVEN)} {rng.choice(SURNAMES)}"
        k = rng.randrange(len(CONDITIONS))
        age = rng.randint(18, 90)
        note = (
            f"Patient {name}, age {age}, ID {cn_id(rng)}, phone {phone(rng)}, "
            f"presented with {CONDITIONS[k]}."
        )
        out.append(
            {
                "instruction": "Summarize the clinic note and give the treatment plan.",
                "input": note,
                "output": f"{name} ({age}) has {CONDITIONS[k]}; plan: {PLANS[k]}.",
            }
        )
    return out


def scan_ciphertext_only(
    dirs: list[Path], markers: tuple[str, ...] = PLAINTEXT_MARKERS, extra: tuple[bytes, ...] = ()
) -> list[str]:
    """Problems found: files without the crypto magic, or containing a plaintext marker."""
    from sealtune_trainer.crypto import MAGIC

    problems: list[str] = []
    needles = [m.encode() for m in markers] + list(extra)
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if not p.is_file():
                continue
            data = p.read_bytes()
            if not data.startswith(MAGIC):
                problems.append(f"{p}: does not start with the Sealtune magic")
            for needle in needles:
                if needle and needle in data:
                    problems.append(f"{p}: contains a plaintext marker")
                    break
    return problems


def job_yaml(
    name: str,
    manifest: str,
    *,
    records: int,
    epochs: int,
    batch: int,
    canaries: int,
    reps: int,
    epsilon: float,
    lr: float,
) -> dict[str, Any]:
    return {
        "apiVersion": "sealtune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "pvc": {"claimName": "base-models", "path": "tiny-llama"},
                "manifestSha256": manifest,
            },
            "dataset": {
                "pvc": {"claimName": "clinical-data", "path": "notes.alpaca.jsonl.enc"},
                "format": "alpaca",
                "keySecret": {"name": "clinical-data-key"},
            },
            "pii": {
                "entities": [
                    "EMAIL",
                    "PHONE",
                    "CN_ID",
                    "BANK_CARD",
                    "IBAN",
                    "IP_ADDRESS",
                    "US_SSN",
                ],
                "mode": "mask",
            },
            "training": {
                "method": "lora",
                "rank": 8,
                "alpha": 16,
                "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "epochs": epochs,
                "learningRate": lr,
                "batchSize": batch,
                "microBatchSize": 16,
                "maxSeqLength": 128,
                "seed": 42,
            },
            "privacy": {
                "enabled": True,
                "targetEpsilon": epsilon,
                "delta": 1.0 / (records * 10),
                "maxGradNorm": 0.1,
                "accountant": "prv",
            },
            "output": {
                "pvc": {"claimName": "adapters", "path": name},
                "keySecret": {"name": "adapter-output-key"},
            },
            "checkpoints": {"intervalSteps": 10},
            "audit": {
                "canaries": canaries,
                "canaryRepetitions": reps,
                "maxCanaryExposure": 8.0,
                "heldOutFraction": 0.2,
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sealtune_devkit.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="demo-out", help="demo directory (recreated)")
    ap.add_argument("--records", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--canaries", type=int, default=4)
    ap.add_argument("--canary-repetitions", type=int, default=4)
    args = ap.parse_args(argv)

    from sealtune_devkit.tinymodel import make_tiny_llama, manifest_digest
    from sealtune_trainer.crypto import generate_key, write_encrypted_bytes
    from sealtune_trainer.logs import quiet_libraries

    quiet_libraries()
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    vols, secrets = out / "volumes", out / "secrets"
    print(f"[1/4] tiny seeded Llama + tokenizer -> {vols / 'base-models/tiny-llama'}")
    model_dir = make_tiny_llama(
        vols / "base-models" / "tiny-llama",
        seed=0,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        vocab_size=512,
    )
    manifest = manifest_digest(model_dir)

    print(f"[2/4] {args.records} synthetic patient notes, encrypted (plaintext never written)")
    for sname in ("clinical-data-key", "adapter-output-key"):
        (secrets / sname).mkdir(parents=True)
        (secrets / sname / "key").write_bytes(generate_key())
    notes = make_patient_notes(args.records, seed=7)
    plaintext = "\n".join(json.dumps(r, ensure_ascii=False) for r in notes).encode("utf-8")
    (vols / "clinical-data").mkdir(parents=True)
    data_key = (secrets / "clinical-data-key" / "key").read_bytes()
    write_encrypted_bytes(vols / "clinical-data" / "notes.alpaca.jsonl.enc", plaintext, data_key)
    sample_name = notes[0]["output"].split(" (")[0]

    import yaml

    job = job_yaml(
        "clinical-notes-demo",
        manifest,
        records=args.records,
        epochs=args.epochs,
        batch=args.batch,
        canaries=args.canaries,
        reps=args.canary_repetitions,
        epsilon=args.epsilon,
        lr=args.lr,
    )
    job_path = out / "finetunejob.yaml"
    job_path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(f"[3/4] sealtune train --config {job_path}")
    summary_path = out / "summary.json"
    cli = "import sys; from sealtune_trainer.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [
        sys.executable,
        "-c",
        cli,
        "train",
        "--config",
        str(job_path),
        "--volumes-root",
        str(vols),
        "--secrets-root",
        str(secrets),
        "--summary-out",
        str(summary_path),
        "--quiet",
        "--device",
        "cpu",
    ]
    env = dict(os.environ)
    env.setdefault("SEALTUNE_CPU_THREADS", "1")  # a tiny model: one thread is fastest
    repo = Path(__file__).resolve().parents[2]  # works without an install too
    roots = [str(repo / d) for d in ("api", "trainer-image")]
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        print(f"training failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode
    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    print("[4/4] report")
    priv, audit = summary["privacy"], summary["audit"] or {}
    audit_eps = audit.get("epsilonLowerBound")
    rows = [
        ("epsilon spent (target)", f"{priv.get('epsilon')} ({priv.get('targetEpsilon')})"),
        ("delta", f"{priv['delta']:.2e}"),
        ("noise multiplier / max grad norm", f"{priv['noiseMultiplier']} / {priv['maxGradNorm']}"),
        ("accountant (adjacency)", f"{priv['accountant']} ({priv['adjacency']})"),
        ("group epsilon k=2/5/10", " / ".join(str(v) for v in priv["groupEpsilon"].values())),
        ("steps", f"{summary['steps']}/{summary['totalSteps']}"),
        ("epsilon lower bound (one run, 95%)", f"{audit_eps}"),
        (
            "canary exposure mean/max (bits)",
            f"{audit.get('canaryExposure')} / "
            f"{audit.get('canaryExposureMax')} "
            f"(max {audit.get('maxCanaryExposure')})",
        ),
        ("audit verdict", audit.get("verdict")),
        ("adapter", summary["adapter"]["path"]),
        ("adapter sha256 (ciphertext)", summary["adapter"]["sha256"]),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  privacy ledger (everything that left the trainer):")
    for entry in priv["ledger"]:
        share = f"epsilon {entry['epsilon']}" if entry.get("epsilon") is not None else "free"
        print(f"    - {entry['statistic']}: {entry['mechanism']} ({share})")
    print(
        "  what it means: epsilon bounds how much any one record can change the adapter's\n"
        "    distribution (smaller is more private); the lower bound is what an auditor\n"
        "    proved from canaries in this one run (it must stay below epsilon); the audit\n"
        "    fails when canaries are memorized or the lower bound exceeds epsilon."
    )
    dirs = [vols / "adapters", vols / "clinical-notes-demo-checkpoints", vols / "clinical-data"]
    problems = scan_ciphertext_only(dirs, extra=(sample_name.encode(),))
    n_files = sum(1 for d in dirs for p in d.rglob("*") if p.is_file())
    if problems:
        print("PLAINTEXT FOUND:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"  ciphertext check: {n_files} files in output/checkpoint/dataset volumes, all "
        "start with the Sealtune magic, no plaintext marker found"
    )
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
