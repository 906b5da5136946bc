"""What DP costs in utility on a model that learns, and whether the audit can tell DP apart.

Setup (all generated here, nothing downloaded):
* base model: the tiny Llama (hidden 64, 2 layers), pretrained on public synthetic text
  (`sealtune_devkit.pretrain`);
* private task: alpaca records "Patient <name>, age <age>, presented with <condition>."
  -> the follow-up clinic day, which a fixed rule (never in the public pretraining text)
  derives from the condition; every record carries a `pid`, 3 records per patient;
* evaluation: PUBLIC held-out records from the same generator with another public seed
  (never trained on, so evaluating costs no epsilon): mean answer-token loss and exact
  match of the answer (every answer token is the model's argmax).

Runs, each through `sealtune_trainer.job.run_job` (the trainer's real path), at equal steps:
non-DP; DP at epsilon 1, 3, 8 with `privacy.unit: record`; the same with `privacy.unit:
user` (`userField: pid`, batch = records/3 users, so q and T match). Then the one-run
epsilon lower bound (Steinke et al. 2023) of a DP (epsilon 8) and a non-DP run with
>= 64 canaries, each repeated. Every setting runs once per seed; a seed is a different
per-job checkpoint key, i.e. different secret sampling, noise, split and canaries.
Finally epsilon for the same (sigma, q, T) from Opacus' PRV and RDP accountants
(`sealtune_trainer.dp.make_accountant`) and Google's PLD (`dp_accounting`, if installed).

    python benchmarks/privacy_utility.py [--quick] [--seeds 3] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _d in ("api", "trainer-image", "devkit"):
    sys.path.insert(0, str(ROOT / _d))

# The private rule: which weekday's clinic follows up each condition (not in public text).
FOLLOW_UP_DAY = {
    "type 2 diabetes": "monday",
    "asthma": "tuesday",
    "hypertension": "monday",
    "a fractured wrist": "friday",
    "pneumonia": "tuesday",
    "migraine": "friday",
    "an allergic rash": "friday",
    "acute bronchitis": "tuesday",
}
INSTRUCTION = "Which day is the follow up clinic for this patient?"
PRIVATE_SEED = 7  # the private records (a real job's data would be secret)
EVAL_SEED = 20261104  # public evaluation records
RECORDS_PER_USER = 3
EPSILONS = (1.0, 3.0, 8.0)
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = [*ATTENTION, "gate_proj", "up_proj", "down_proj"]


def make_task_records(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` alpaca records, RECORDS_PER_USER per patient (`pid`), answers by FOLLOW_UP_DAY."""
    from sealtune_devkit.demo import GIVEN, SURNAMES

    rng = random.Random(seed)
    conditions = list(FOLLOW_UP_DAY)
    out: list[dict[str, Any]] = []
    pid = 0
    while len(out) < n:
        pid += 1
        name = f"{rng.choice(GIVEN)} {rng.choice(SURNAMES)}"
        age = rng.randint(18, 90)
        for _ in range(min(RECORDS_PER_USER, n - len(out))):
            cond = rng.choice(conditions)
            out.append(
                {
                    "pid": f"p{seed}-{pid}",
                    "instruction": INSTRUCTION,
                    "input": f"Patient {name}, age {age}, presented with {cond}.",
                    "output": FOLLOW_UP_DAY[cond],
                }
            )
    return out


def bench_key(label: str) -> bytes:
    """A reproducible 32-byte key for this benchmark (never use such keys for real data)."""
    return hashlib.sha256(b"sealtune-bench-privacy-utility/" + label.encode()).digest()


# ----------------------------------------------------------------------------- worker


def _eval(model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> tuple[float, float]:
    """(mean answer-token loss, exact-match accuracy) on public records."""
    import torch

    from sealtune_trainer.audit import example_losses
    from sealtune_trainer.data import parse_records, tokenize_records
    from sealtune_trainer.training import collate

    raw = "\n".join(json.dumps(r) for r in records).encode()
    examples = tokenize_records(tokenizer, parse_records(raw, "alpaca"), 128)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = example_losses(model, examples, pad, "cpu")
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = collate(examples[i : i + 64], pad, "cpu")
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            pred = logits[:, :-1].argmax(-1)
            labels = batch.labels[:, 1:]
            ok = (pred == labels) | (labels == -100)
            correct += int(ok.all(dim=1).sum())
    return sum(losses) / len(losses), correct / len(examples)


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One job (or the base model's evaluation) in a worker process."""
    os.environ["SEALTUNE_CPU_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from sealtune_api.trainer_config import TrainerConfig, TrainingConfig
    from sealtune_trainer.job import run_job
    from sealtune_trainer.logs import quiet_libraries
    from sealtune_trainer.model_loading import load_base_model, load_tokenizer

    quiet_libraries()
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec["model"])
    if spec["kind"] == "base":
        model = load_base_model(spec["model"], TrainingConfig(), "cpu")
        loss, acc = _eval(model, tokenizer, spec["eval"])
        return {**_public(spec), "loss": loss, "acc": acc, "seconds": time.perf_counter() - t0}
    work = Path(spec["work"]) / spec["name"]
    work.mkdir(parents=True)
    ckpt_key = work / "checkpoint.key"
    ckpt_key.write_bytes(bench_key(f"checkpoint/{spec['seed']}"))
    private = spec["epsilon"] is not None
    privacy: dict[str, Any] = {"enabled": private, "delta": spec["delta"]}
    if private:
        privacy.update(targetEpsilon=spec["epsilon"], maxGradNorm=spec["clip"])
    if spec["unit"] == "user":
        privacy.update(unit="user", userField="pid", maxRecordsPerUser=RECORDS_PER_USER)
    cfg = TrainerConfig.model_validate(
        {
            "jobName": spec["name"],
            "jobUid": f"bench-seed-{spec['seed']}",
            "modelDir": spec["model"],
            "dataset": {"path": spec["data"], "format": "alpaca", "keyFile": spec["data_key"]},
            "outputDir": str(work / "output"),
            "outputKeyFile": spec["data_key"],
            "checkpointDir": str(work / "checkpoints"),
            "checkpointKeyFile": str(ckpt_key),
            "checkpointIntervalSteps": 10_000,
            "scratchDir": str(work),
            "metricsPort": 0,
            "terminationMessagePath": str(work / "termination-log"),
            "training": {
                "rank": spec.get("rank", 8),
                "alpha": 2 * spec.get("rank", 8),
                "targetModules": spec.get("modules", ATTENTION),
                "epochs": spec["epochs"],
                "learningRate": spec["lr"],
                "batchSize": spec["batch"],
                "microBatchSize": 64,
                "maxSeqLength": 128,
                "seed": 42,
            },
            "privacy": privacy,
            "pii": {"enabled": False},
            "audit": {
                "canaries": spec["canaries"],
                "canaryRepetitions": spec["reps"],
                "heldOutFraction": 0.02,
                # the exposure threshold is not what this benchmark measures
                "maxCanaryExposure": 10.0,
            },
        }
    )
    result = run_job(cfg, device="cpu")
    s = result.summary
    assert s.privacy is not None and s.audit is not None
    out = {
        **_public(spec),
        "steps": s.steps,
        "sigma": s.privacy.noise_multiplier,
        "q": s.privacy.sample_rate,
        "spent": s.privacy.epsilon,
        "lower_bound": s.audit.epsilon_lower_bound,
        "auc": s.audit.membership_auc_calibrated,
        "exposure": s.audit.canary_exposure,
        "verdict": s.audit.verdict,
    }
    if not spec["canaries"]:
        out["loss"], out["acc"] = _eval(result.model, tokenizer, spec["eval"])
    out["seconds"] = time.perf_counter() - t0
    return out


def _public(spec: dict[str, Any]) -> dict[str, Any]:
    keys = ("kind", "name", "seed", "unit", "epsilon", "canaries", "reps", "delta")
    return {k: spec.get(k) for k in keys}


# ----------------------------------------------------------------------------- accounting


def epsilons(sigma: float, q: float, steps: int, delta: float) -> dict[str, float | None]:
    """Epsilon of T Poisson-subsampled Gaussian steps from three accountants."""
    from sealtune_trainer.dp import make_accountant

    out: dict[str, float | None] = {}
    for kind in ("prv", "rdp"):
        acc = make_accountant(kind)
        acc.history = [(sigma, q, steps)]
        out[kind] = float(acc.get_epsilon(delta=delta))
    try:
        from dp_accounting import dp_event, pld

        pld_acc = pld.PLDAccountant(value_discretization_interval=1e-4)
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        pld_acc.compose(dp_event.SelfComposedDpEvent(event, steps))
        out["pld"] = float(pld_acc.get_epsilon(delta))
    except ImportError:
        out["pld"] = None
    return out


# ----------------------------------------------------------------------------- main


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small data, one seed")
    ap.add_argument("--seeds", type=int, default=3, help="checkpoint keys (secret randomness)")
    ap.add_argument("--records", type=int, default=600, help="private records (3 per user)")
    ap.add_argument("--batch", type=int, default=60, help="records per step (users: /3)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=0.1, help="privacy.maxGradNorm")
    ap.add_argument("--canaries", type=int, default=64)
    ap.add_argument("--canary-repetitions", type=int, default=16)
    ap.add_argument("--audit-epochs", type=int, default=8, help="epochs of the audit runs")
    ap.add_argument("--audit-batch", type=int, default=16, help="batch of the audit runs")
    ap.add_argument("--audit-lr", type=float, default=0.003)
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny model")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--eval-records", type=int, default=300)
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", help="also write every run's numbers here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.records, args.batch, args.epochs = 1, 150, 30, 1
        args.canaries, args.canary_repetitions, args.audit_epochs = 32, 2, 2
        args.eval_records, args.pretrain_steps, args.hidden = 60, 60, 64
    if args.batch % RECORDS_PER_USER:
        ap.error(f"--batch must be a multiple of {RECORDS_PER_USER}")

    from sealtune_devkit.pretrain import make_pretrained_tiny_llama
    from sealtune_trainer.crypto import write_encrypted_bytes
    from sealtune_trainer.logs import quiet_libraries

    quiet_libraries()
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="sealtune-bench-")
    work = Path(tmp.name)
    model, pre = make_pretrained_tiny_llama(
        work / "model",
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=4,
        vocab_size=512,
        steps=args.pretrain_steps,
    )
    print(
        f"base model: tiny Llama hidden {args.hidden} x {args.layers} layers, pretrained "
        f"{pre.steps} steps on public text in {pre.seconds:.0f}s (held-out public loss "
        f"{pre.held_out_before:.2f} -> {pre.held_out_after:.2f})"
    )
    data_key = work / "data.key"
    data_key.write_bytes(bench_key("data"))
    records = make_task_records(args.records, PRIVATE_SEED)
    blob = "\n".join(json.dumps(r) for r in records).encode()
    write_encrypted_bytes(work / "data.enc", blob, data_key.read_bytes())
    eval_records = make_task_records(args.eval_records, EVAL_SEED)
    common = {
        "model": str(model),
        "work": str(work / "runs"),
        "data": str(work / "data.enc"),
        "data_key": str(data_key),
        "eval": eval_records,
        "delta": 1.0 / (10 * args.records),
        "lr": args.lr,
        "clip": args.clip,
    }
    specs: list[dict[str, Any]] = [{**common, "kind": "base", "name": "base"}]
    for seed in range(args.seeds):
        one = {**common, "kind": "train", "seed": seed, "canaries": 0, "reps": 1}
        one["epochs"] = args.epochs
        specs.append({**one, "name": f"s{seed}-nodp", "unit": "record", "epsilon": None})
        specs.append({**one, "name": f"s{seed}-nodp-user", "unit": "user", "epsilon": None})
        for eps in EPSILONS:
            for unit in ("record", "user"):
                batch = args.batch if unit == "record" else args.batch // RECORDS_PER_USER
                specs.append(
                    {**one, "name": f"s{seed}-{unit}-e{eps:g}", "unit": unit, "epsilon": eps}
                    | {"batch": batch}
                )
        audit = {**common, "kind": "audit", "seed": seed, "unit": "record"}
        audit |= {"canaries": args.canaries, "reps": args.canary_repetitions}
        # Over-trained on purpose (small batch, many passes, LoRA on every linear layer):
        # the non-DP run must memorize canaries for the bound to have something to find.
        audit |= {"epochs": args.audit_epochs, "batch": args.audit_batch, "lr": args.audit_lr}
        audit |= {"modules": ALL_LINEAR, "rank": 16}
        specs.append({**audit, "name": f"s{seed}-audit-nodp", "epsilon": None})
        specs.append({**audit, "name": f"s{seed}-audit-e8", "epsilon": 8.0})
    for s in specs:
        s.setdefault("batch", args.batch)
    # The longest jobs (DP with many canaries) first keeps both workers busy to the end.
    specs.sort(key=lambda s: (s["kind"] != "audit", s.get("epsilon") is None))
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        for r in pool.map(run_one, specs):
            results.append(r)
    wall = time.perf_counter() - t0
    report(args, common["delta"], results)
    print(f"done in {wall:.0f}s ({len(specs)} runs, {args.workers} workers)")
    if args.json:
        Path(args.json).write_text(
            json.dumps([{k: v for k, v in r.items() if k != "eval"} for r in results], indent=1)
        )
    tmp.cleanup()
    return 0


def _steps(rows: list[dict[str, Any]]) -> str:
    return "/".join(str(s) for s in sorted({r["steps"] for r in rows}))


def _share(x: float, ref: float, base: float, *, lower_is_better: bool) -> float:
    """x's share of the reference's improvement over the base model."""
    gain = (base - ref) if lower_is_better else (ref - base)
    if gain <= 0:
        return math.nan
    return ((base - x) if lower_is_better else (x - base)) / gain


def report(args: argparse.Namespace, delta: float, results: list[dict[str, Any]]) -> None:
    """Print the tables (markdown) from every run's numbers."""
    base = next(r for r in results if r["kind"] == "base")
    train = [r for r in results if r["kind"] == "train"]
    audits = [r for r in results if r["kind"] == "audit"]

    def runs(unit: str, eps: float | None) -> list[dict[str, Any]]:
        return [r for r in train if r["unit"] == unit and r["epsilon"] == eps]

    users = args.records // RECORDS_PER_USER
    print(
        f"\nprivate task: {args.records} records ({users} patients x {RECORDS_PER_USER}), "
        f"{args.epochs} epochs, batch {args.batch} records (user unit: "
        f"{args.batch // RECORDS_PER_USER} patients), lr {args.lr}, maxGradNorm {args.clip}, "
        f"delta {delta:.1e}, LoRA r=8 on q/k/v/o, noised loss release on (default); "
        f"{args.seeds} seed(s) = checkpoint keys; eval: {args.eval_records} PUBLIC records"
    )
    print(f"base model: eval loss {base['loss']:.3f}, exact match {base['acc']:.3f}\n")
    print(
        "| unit | epsilon | steps | sigma | eval loss | exact match | "
        "share of non-DP loss gain (per seed) | share of accuracy gain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    shares: dict[tuple[str, float], tuple[float, float]] = {}
    for unit in ("record", "user"):
        # Without DP the unit changes only the held-out split (by patient) and the
        # per-user cap: each unit's DP runs are compared with the non-DP run on its split.
        ref_rows = runs(unit, None)
        ref = {r["seed"]: r for r in ref_rows}
        loss = _mean([r["loss"] for r in ref_rows])
        acc = _mean([r["acc"] for r in ref_rows])
        print(f"| {unit} | non-DP | {_steps(ref_rows)} | - | {loss:.3f} | {acc:.3f} | 1 | 1 |")
        for eps in EPSILONS:
            rows = runs(unit, eps)
            loss_sh = [
                _share(r["loss"], ref[r["seed"]]["loss"], base["loss"], lower_is_better=True)
                for r in rows
            ]
            acc_sh = [
                _share(r["acc"], ref[r["seed"]]["acc"], base["acc"], lower_is_better=False)
                for r in rows
            ]
            shares[(unit, eps)] = (_mean(loss_sh), _mean(acc_sh))
            sigma = _fmt(_mean([r["sigma"] for r in rows]), 2)
            per_seed = ", ".join(f"{x:.2f}" for x in loss_sh)
            print(
                f"| {unit} | {eps:g} | {_steps(rows)} | {sigma} | "
                f"{_mean([r['loss'] for r in rows]):.3f} | {_mean([r['acc'] for r in rows]):.3f} "
                f"| {_mean(loss_sh):.2f} ({per_seed}) | {_fmt(_mean(acc_sh), 2)} |"
            )

    print("\nratios side by side: DP's share of the non-DP gain at equal steps (mean of seeds)\n")
    print("| epsilon | loss, record | loss, user | accuracy, record | accuracy, user |")
    print("|---|---|---|---|---|")
    for eps in EPSILONS:
        (lr_, ar), (lu, au) = shares[("record", eps)], shares[("user", eps)]
        print(f"| {eps:g} | {lr_:.2f} | {lu:.2f} | {_fmt(ar, 2)} | {_fmt(au, 2)} |")

    print(
        f"\none-run epsilon lower bound (95%): {args.canaries} canaries (each in by a secret "
        f"coin) x {args.canary_repetitions} repetitions; over-trained on purpose: "
        f"{args.audit_epochs} epochs, batch {args.audit_batch}, lr {args.audit_lr}, LoRA r=16 on "
        "every linear layer (record unit)\n"
    )
    print(
        "| seed | DP epsilon | DP lower bound | non-DP lower bound | separated | "
        "calibrated canary AUC DP / non-DP | exposure DP / non-DP (bits) | verdict DP / non-DP |"
    )
    print("|---|---|---|---|---|---|---|---|")
    separated_all = True
    for seed in range(args.seeds):
        dp_run = next(r for r in audits if r["seed"] == seed and r["epsilon"] is not None)
        nodp = next(r for r in audits if r["seed"] == seed and r["epsilon"] is None)
        sep = (nodp["lower_bound"] or 0.0) > (dp_run["lower_bound"] or 0.0)
        separated_all &= sep
        print(
            f"| {seed} | {_fmt(dp_run['spent'], 2)} | {_fmt(dp_run['lower_bound'], 2)} | "
            f"{_fmt(nodp['lower_bound'], 2)} | {'yes' if sep else 'NO'} | "
            f"{_fmt(dp_run['auc'], 2)} / {_fmt(nodp['auc'], 2)} | "
            f"{_fmt(dp_run['exposure'], 2)} / {_fmt(nodp['exposure'], 2)} | "
            f"{dp_run['verdict']} / {nodp['verdict']} |"
        )

    print(
        "\nepsilon of the DP-SGD steps alone, same (sigma, q, T), by accountant (add/remove, "
        "delta as above; the target is met by DP-SGD composed with the noised loss release):\n"
    )
    print("| unit | target | sigma | q | T | PRV (Opacus) | RDP (Opacus) | PLD (dp_accounting) |")
    print("|---|---|---|---|---|---|---|---|")
    for unit in ("record", "user"):
        for eps in EPSILONS:
            r = runs(unit, eps)[0]
            e = epsilons(r["sigma"], r["q"], r["steps"], delta)
            print(
                f"| {unit} | {eps:g} | {r['sigma']:.3f} | {r['q']:.4f} | {r['steps']} | "
                f"{_fmt(e['prv'])} | {_fmt(e['rdp'])} | {_fmt(e['pld'])} |"
            )

    share8 = shares[("record", 8.0)][0]
    print(
        f"\ngoals: DP at epsilon 8 (record) keeps {share8:.0%} of the non-DP loss gain "
        f"({'met' if share8 >= 0.7 else 'NOT met'}: >= 70%); the audit separates DP from "
        f"non-DP in {'every' if separated_all else 'NOT every'} seed "
        f"({'met' if separated_all else 'NOT met'})"
    )


if __name__ == "__main__":
    sys.exit(main())
