"""`python -m sealtune_devkit.demo`: the whole trainer story on a laptop CPU in minutes.

1. generate a tiny seeded Llama-shaped model + tokenizer (nothing is downloaded) and
   pretrain it briefly on PUBLIC synthetic clinical text (`sealtune_devkit.pretrain`), so
   the base model knows some language before it sees private data,
2. generate synthetic, fake but checksum-valid patient notes (names, phones, Chinese
   resident IDs), encrypt them and delete the plaintext,
3. write a FineTuneJob YAML and run it with `sealtune train` (the real code path:
   decrypt in memory, redact, DP-LoRA, encrypted checkpoints, audit, encrypted adapter),
   and the same job with `privacy.enabled: false` next to it, for comparison,
4. evaluate the base model and both adapters (decrypted in memory) on PUBLIC notes from
   the same generator with another public seed, never trained on: a function of the
   released adapter and public data is post-processing and costs no epsilon,
5. print the report (epsilon, delta, the privacy ledger, the one-run epsilon lower bound,
   the audit, utility with and without DP) and prove the output and checkpoint
   directories hold only ciphertext (every file starts with the format's magic; no
   plaintext marker inside).
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

# Public seeds: the evaluation notes are generated, never trained on (private notes: seed 7).
PRIVATE_NOTES_SEED = 7
PUBLIC_EVAL_SEED = 20261103
PII_ENTITIES = ["EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IBAN", "IP_ADDRESS", "US_SSN"]
MAX_SEQ_LENGTH = 128

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
    private: bool = True,
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
            "pii": {"entities": list(PII_ENTITIES), "mode": "mask"},
            "training": {
                "method": "lora",
                "rank": 8,
                "alpha": 16,
                "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "epochs": epochs,
                "learningRate": lr,
                "batchSize": batch,
                "microBatchSize": 16,
                "maxSeqLength": MAX_SEQ_LENGTH,
                "seed": 42,
            },
            "privacy": {
                "enabled": private,
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


def public_eval_examples(tokenizer: Any, n: int, seed: int = PUBLIC_EVAL_SEED) -> list[Any]:
    """`n` PUBLIC notes (the private generator, a public seed), redacted and tokenized
    exactly as the job treats its training records (loss on the summary only)."""
    from sealtune_trainer.data import parse_records, redact_records, tokenize_records
    from sealtune_trainer.redact import Redactor

    notes = make_patient_notes(n, seed)
    raw = "\n".join(json.dumps(r, ensure_ascii=False) for r in notes).encode("utf-8")
    records = redact_records(parse_records(raw, "alpaca"), Redactor(PII_ENTITIES, "mask").redact)
    return tokenize_records(tokenizer, records, MAX_SEQ_LENGTH)


def eval_losses(
    model_dir: Path,
    manifest: str,
    examples: list[Any],
    adapters: dict[str, tuple[Path, Path] | None],
) -> dict[str, float]:
    """Mean answer-token loss on `examples` of the base model (value None) and of each
    encrypted adapter `(adapter.tar.enc, key file)`, decrypted in memory, never to disk."""
    from sealtune_api.trainer_config import TrainingConfig
    from sealtune_trainer.audit import example_losses
    from sealtune_trainer.model_loading import load_base_model, load_tokenizer, verify_model_dir
    from sealtune_trainer.serve.adapter import apply_adapter, load_adapter

    verify_model_dir(model_dir, manifest)
    tokenizer = load_tokenizer(model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: dict[str, float] = {}
    for name, adapter in adapters.items():
        model = load_base_model(model_dir, TrainingConfig(), "cpu")
        if adapter is not None:
            state, config = load_adapter(*adapter)
            model = apply_adapter(model, state, config, merge=True)
        losses = example_losses(model, examples, pad, "cpu")
        out[name] = sum(losses) / len(losses)
    return out


def _start_train(
    job_path: Path, vols: Path, secrets: Path, summary: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`sealtune train` in a child process (one CPU thread); its JSON log goes to `log`."""
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
        str(summary),
        "--quiet",
        "--device",
        "cpu",
    ]
    env = dict(os.environ)
    env.setdefault("SEALTUNE_CPU_THREADS", "1")  # a tiny model: one thread is fastest
    repo = Path(__file__).resolve().parents[2]  # works without an install too
    roots = [str(repo / d) for d in ("api", "trainer-image")]
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


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
    ap.add_argument(
        "--canaries", type=int, default=32, help="audit canaries (>= 16 for the lower bound)"
    )
    ap.add_argument("--canary-repetitions", type=int, default=2)
    ap.add_argument("--pretrain-steps", type=int, default=400, help="public pretraining steps")
    ap.add_argument("--pretrain-docs", type=int, default=4000, help="public documents")
    ap.add_argument("--eval-records", type=int, default=200, help="public evaluation notes")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model")
    args = ap.parse_args(argv)

    from sealtune_api.summary import TrainerSummary
    from sealtune_devkit.pretrain import make_pretrained_tiny_llama
    from sealtune_trainer.crypto import generate_key, write_encrypted_bytes
    from sealtune_trainer.logs import quiet_libraries
    from sealtune_trainer.model_loading import load_tokenizer

    quiet_libraries()
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    vols, secrets = out / "volumes", out / "secrets"
    model_dir = vols / "base-models" / "tiny-llama"
    print(f"[1/5] tiny seeded Llama + tokenizer -> {model_dir}")
    _, pre = make_pretrained_tiny_llama(
        model_dir,
        seed=0,
        docs=args.pretrain_docs,
        steps=args.pretrain_steps,
        hidden_size=args.hidden,
        num_layers=2,
        num_heads=4,
        vocab_size=512,
    )
    manifest = pre.manifest_sha256
    print(
        f"      pretrained on {args.pretrain_docs} PUBLIC synthetic clinical texts (all weights, "
        f"no DP: the text is public), {pre.steps} steps in {pre.seconds:.0f}s; held-out public "
        f"text loss {_num(pre.held_out_before)} -> {_num(pre.held_out_after)}"
    )

    print(f"[2/5] {args.records} synthetic patient notes, encrypted (plaintext never written)")
    for sname in ("clinical-data-key", "adapter-output-key"):
        (secrets / sname).mkdir(parents=True)
        (secrets / sname / "key").write_bytes(generate_key())
    notes = make_patient_notes(args.records, seed=PRIVATE_NOTES_SEED)
    plaintext = "\n".join(json.dumps(r, ensure_ascii=False) for r in notes).encode("utf-8")
    (vols / "clinical-data").mkdir(parents=True)
    data_key = (secrets / "clinical-data-key" / "key").read_bytes()
    write_encrypted_bytes(vols / "clinical-data" / "notes.alpaca.jsonl.enc", plaintext, data_key)
    sample_name = notes[0]["output"].split(" (")[0]
    del notes, plaintext

    import yaml

    jobs = {"dp": "clinical-notes-demo", "nodp": "clinical-notes-demo-nodp"}
    files = {"dp": out / "finetunejob.yaml", "nodp": out / "finetunejob-nodp.yaml"}
    for kind, name in jobs.items():
        job = job_yaml(
            name,
            manifest,
            records=args.records,
            epochs=args.epochs,
            batch=args.batch,
            canaries=args.canaries,
            reps=args.canary_repetitions,
            epsilon=args.epsilon,
            lr=args.lr,
            private=kind == "dp",
        )
        files[kind].write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    print(
        f"[3/5] sealtune train --config {files['dp']}\n"
        f"      and, side by side, the same job without DP: {files['nodp'].name}"
    )
    summaries = {k: out / f"summary-{k}.json" for k in jobs}
    procs = {
        k: _start_train(files[k], vols, secrets, summaries[k], out / "logs" / f"{jobs[k]}.log")
        for k in jobs
    }
    failed = False
    for kind, proc in procs.items():
        if proc.wait() != 0:
            log = (out / "logs" / f"{jobs[kind]}.log").read_text(errors="replace")
            print(f"training {jobs[kind]} failed (exit {proc.returncode}):", file=sys.stderr)
            print(log[-3000:], file=sys.stderr)
            failed = True
    if failed:
        return 1
    parsed = {k: TrainerSummary.parse(summaries[k].read_text(encoding="utf-8")) for k in jobs}
    dp, nodp = parsed["dp"], parsed["nodp"]
    if dp is None or nodp is None or dp.privacy is None or dp.adapter is None:
        print("a training run left no summary", file=sys.stderr)
        return 1
    assert nodp.adapter is not None

    print(f"[4/5] evaluation on {args.eval_records} PUBLIC notes (never trained on)")
    tokenizer = load_tokenizer(model_dir)
    examples = public_eval_examples(tokenizer, args.eval_records)
    out_key = secrets / "adapter-output-key" / "key"
    losses = eval_losses(
        model_dir,
        manifest,
        examples,
        {
            "base": None,
            "dp": (vols / "adapters" / dp.adapter.path, out_key),
            "nodp": (vols / "adapters" / nodp.adapter.path, out_key),
        },
    )
    gain = losses["base"] - losses["nodp"]
    share = (losses["base"] - losses["dp"]) / gain if gain > 0 else None

    print("[5/5] report")
    priv, audit = dp.privacy, dp.audit
    naudit = nodp.audit
    rows = [
        ("epsilon spent (target)", f"{priv.epsilon} ({priv.target_epsilon})"),
        ("delta", f"{priv.delta:.2e}" if priv.delta is not None else "-"),
        ("noise multiplier / max grad norm", f"{priv.noise_multiplier} / {priv.max_grad_norm}"),
        ("accountant (adjacency, unit)", f"{priv.accountant} ({priv.adjacency}, {priv.unit})"),
        ("group epsilon k=2/5/10", " / ".join(f"{v:.1f}" for v in priv.group_epsilon.values())),
        ("steps", f"{dp.steps}/{dp.total_steps}"),
    ]
    if dp.noised_loss:
        rows.append(
            (
                "noised training loss (DP release)",
                " -> ".join(f"{x:.2f}" for x in dp.noised_loss)
                + f" (every {dp.noised_loss_interval} steps)",
            )
        )
    lb = audit.epsilon_lower_bound if audit else None
    nlb = naudit.epsilon_lower_bound if naudit else None
    rows += [
        (
            "epsilon lower bound (one run, 95%)",
            f"{_num(lb)} (without DP: {_num(nlb)}; {args.canaries} canaries, each in by a "
            "secret coin)",
        ),
        (
            "calibrated canary AUC",
            f"{_num(audit.membership_auc_calibrated if audit else None)} "
            f"(without DP: {_num(naudit.membership_auc_calibrated if naudit else None)})",
        ),
        (
            "canary exposure mean/max (bits)",
            f"{_num(audit.canary_exposure if audit else None)} / "
            f"{_num(audit.canary_exposure_max if audit else None)} "
            f"(fail above {audit.max_canary_exposure if audit else '-'})",
        ),
        (
            "audit verdict",
            f"{audit.verdict if audit else '-'} (without DP: {naudit.verdict if naudit else '-'})",
        ),
        (
            "eval loss base -> DP -> non-DP",
            f"{losses['base']:.3f} -> {losses['dp']:.3f} -> {losses['nodp']:.3f}",
        ),
        ("DP's share of the non-DP loss gain", f"{share:.0%}" if share is not None else "-"),
        ("adapter", dp.adapter.path),
        ("adapter sha256 (ciphertext)", dp.adapter.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print("  privacy ledger (everything that left the DP trainer):")
    for entry in priv.ledger:
        cost = f"epsilon {entry.epsilon}" if entry.epsilon is not None else "free"
        print(f"    - {entry.statistic}: {entry.mechanism} ({cost})")
    print(
        "    - eval loss on public notes (this report): post-processing of the released "
        "adapter with public data (free)"
    )
    eps_text = _num(priv.epsilon)
    print(
        "  what it means:\n"
        f"    epsilon {eps_text}: with or without any one note, nothing this job releases "
        f"becomes more than e^{eps_text} times likelier (except with probability delta).\n"
        f"    lower bound {_num(lb)}: the epsilon this run's secret-coin canaries prove it "
        "leaks, at 95%; above epsilon would mean broken DP (0: nothing measurable).\n"
        f"    audit {audit.verdict if audit else '-'}: fails when the lower bound exceeds "
        "epsilon or canaries are memorized past maxCanaryExposure bits."
    )
    dirs = [vols / "adapters", vols / "clinical-data"]
    dirs += [vols / f"{name}-checkpoints" for name in jobs.values()]
    problems = scan_ciphertext_only(dirs, extra=(sample_name.encode(),))
    for log_file in sorted((out / "logs").glob("*.log")):  # trainer logs: no record text
        if any(m in log_file.read_bytes() for m in (sample_name.encode(), b"presented with")):
            problems.append(f"{log_file}: contains text of a private record")
    n_files = sum(1 for d in dirs for p in d.rglob("*") if p.is_file())
    if problems:
        print("PLAINTEXT FOUND:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"  ciphertext check: {n_files} files in output/checkpoint/dataset volumes, all "
        "start with the Sealtune magic, no plaintext marker found"
    )
    report = {
        "epsilon": priv.epsilon,
        "targetEpsilon": priv.target_epsilon,
        "delta": priv.delta,
        "epsilonLowerBound": lb,
        "epsilonLowerBoundNoDP": nlb,
        "auditVerdict": audit.verdict if audit else None,
        "evalLoss": losses,
        "dpShareOfLossGain": share,
        "ledger": [e.wire() for e in priv.ledger],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
