"""DP-LoRA against plain LoRA at the same logical batch on the same model.

Modes (each in its own subprocess, so peak memory is measured cleanly):
  nodp   plain LoRA fine-tuning step (AdamW)
  lora   Sealtune's shipped path: per-sample LoRA grads in the LoRA layers' own backward,
         Opacus DPOptimizer clipping/noise (sealtune_trainer.dp)
  hooks  Opacus GradSampleModule (per-sample hooks) + DPOptimizer
  ghost  Opacus ghost clipping (GradSampleModuleFastGradientClipping + DPLossFastGradientClipping)

CPU default: Llama-shaped random-init, hidden 256, 4 layers, seq 128, batch 8.
`--device cuda`: Llama-shaped ~1.1B random-init (TinyLlama shape) at seq 512, bf16.
Prints step time, tokens/s, peak memory and the ratios to `nodp`.

    python benchmarks/dp_overhead.py [--device cuda] [--steps 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _d in ("api", "trainer-image", "devkit"):
    sys.path.insert(0, str(ROOT / _d))

MODES = ("nodp", "lora", "hooks", "ghost")


def model_shape(device: str, args: argparse.Namespace) -> dict[str, int]:
    if device == "cuda":
        return dict(
            hidden=2048,
            layers=22,
            heads=32,
            kv_heads=4,
            inter=5632,
            vocab=32000,
            seq=args.seq or 512,
            batch=args.batch or 8,
        )
    return dict(
        hidden=256,
        layers=4,
        heads=4,
        kv_heads=4,
        inter=688,
        vocab=2048,
        seq=args.seq or 128,
        batch=args.batch or 8,
    )


def build_mode(mode: str, device: str, shape: dict[str, int], micro: int) -> Any:
    """Model + optimizer for `mode`; returns (step function, parameter count)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.nn import functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from sealtune_trainer import dp

    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["inter"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=max(1024, shape["seq"]),
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base: Any = LlamaForCausalLM(cfg)
    base = base.to(device=device, dtype=dtype)
    base.config.use_cache = False
    model: Any = get_peft_model(
        base,
        LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights and their optimizer state in fp32
    n_params = sum(p.numel() for p in model.parameters())
    b, t = shape["batch"], shape["seq"]
    ids = torch.randint(4, shape["vocab"], (b, t), device=device)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    C = 1.0

    def per_sample(logits: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        tok = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            lab[:, 1:].reshape(-1),
            reduction="none",
        )
        return tok.view(lab.shape[0], -1).mean(dim=1)

    chunks = [slice(i, min(i + micro, b)) for i in range(0, b, micro)]
    if mode == "nodp":

        def step() -> None:
            for sl in chunks:
                out = model(input_ids=ids[sl], attention_mask=mask[sl]).logits
                (per_sample(out, labels[sl]).sum() / b).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif mode in ("lora", "hooks"):
        fwd = model
        if mode == "lora":
            dp.enable_lora_per_sample_grads(model)
        else:
            from opacus import GradSampleModule

            fwd = GradSampleModule(model, loss_reduction="sum")
        dpo = dp.make_dp_optimizer(
            opt, noise_multiplier=1.0, max_grad_norm=C, expected_batch_size=b, generator=None
        )

        def step() -> None:
            for i, sl in enumerate(chunks):
                out = fwd(input_ids=ids[sl], attention_mask=mask[sl]).logits
                per_sample(out, labels[sl]).sum().backward()
                if i < len(chunks) - 1:
                    dpo.signal_skip_step(do_skip=True)
                dpo.step()
                dpo.zero_grad(set_to_none=True)
    elif mode == "ghost":
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        gm = GradSampleModuleFastGradientClipping(
            model, max_grad_norm=C, use_ghost_clipping=True, loss_reduction="mean"
        )
        gopt = DPOptimizerFastGradientClipping(
            opt, noise_multiplier=1.0, max_grad_norm=C, expected_batch_size=b, loss_reduction="mean"
        )
        crit = DPLossFastGradientClipping(
            gm, gopt, torch.nn.CrossEntropyLoss(reduction="mean"), loss_reduction="mean"
        )

        def step() -> None:
            for i, sl in enumerate(chunks):
                out = gm(input_ids=ids[sl], attention_mask=mask[sl]).logits[:, :-1].float()
                loss = crit(
                    out.reshape(-1, out.shape[-1]),
                    labels[sl][:, 1:].reshape(-1),
                    shape=(out.shape[0], out.shape[1]),
                )
                loss.backward()
                if i < len(chunks) - 1:
                    gopt.signal_skip_step(do_skip=True)
                gopt.step()
                gopt.zero_grad(set_to_none=True)
    else:
        raise SystemExit(f"unknown mode {mode}")

    return step, n_params


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure_memory(mode: str, device: str, shape: dict[str, int], micro: int) -> dict[str, Any]:
    """Peak memory of `mode` in a fresh process: GPU peak allocated, or CPU peak RSS."""
    import torch

    step, n_params = build_mode(mode, device, shape, micro)
    base_gpu = 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):
        step()
    _sync(device)
    res: dict[str, Any] = {
        "mode": mode,
        "params": n_params,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss0 / 1024,
    }
    if device == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        res["base_gpu_mib"] = base_gpu
    return res


def measure_time(
    modes: list[str], device: str, shape: dict[str, int], micro: int, steps: int, warmup: int
) -> dict[str, float]:
    """Median step time per mode, steps interleaved round-robin so load noise hits all alike."""
    fns = {m: build_mode(m, device, shape, micro)[0] for m in modes}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(steps):
        for m, fn in fns.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    out = {m: statistics.median(v) for m, v in times.items()}
    out.update({m + ":cpu": statistics.median(v) for m, v in cpu.items()})
    return out


def child_time_single(mode: str, child: Any) -> dict[str, float]:
    res = child("time-" + mode)
    return {k: float(v) for k, v in res.items() if k.split(":")[0] == mode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--batch", type=int, default=0, help="logical batch")
    ap.add_argument("--micro", type=int, default=0, help="physical batch (default: logical)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default="")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = model_shape(args.device, args)
    micro = args.micro or shape["batch"]
    modes = args.modes.split(",")
    if args.child.startswith("time-"):
        one = args.child[len("time-") :]
        print(
            "RESULT "
            + json.dumps(measure_time([one], args.device, shape, micro, args.steps, args.warmup))
        )
        return 0
    if args.child == "time":
        print(
            "RESULT "
            + json.dumps(measure_time(modes, args.device, shape, micro, args.steps, args.warmup))
        )
        return 0
    if args.child:
        print("RESULT " + json.dumps(measure_memory(args.child, args.device, shape, micro)))
        return 0

    def child(what: str) -> dict[str, Any]:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            what,
            "--device",
            args.device,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--modes",
            args.modes,
            "--seq",
            str(shape["seq"]),
            "--batch",
            str(shape["batch"]),
            "--micro",
            str(micro),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return {"error": err[:300]}
        return dict(json.loads(line[0][len("RESULT ") :]))

    results: dict[str, dict[str, Any]] = {m: child(m) for m in modes}
    timing = child("time") if args.device == "cpu" else {}
    if args.device == "cuda":  # a GPU run is quiet: time each mode in its own process too
        for m in modes:
            timing.update(child_time_single(m, child))
    if "error" in timing:
        print("timing failed: " + str(timing["error"]))
        return 1
    for m in modes:
        if m in timing and "error" not in results[m]:
            results[m]["wall_s"] = timing[m]
            # On a shared CPU box wall time swings with other tenants' load; the process CPU
            # time of a 1-thread run is the stable measure, so ratios use it on CPU.
            results[m]["step_s"] = (
                timing.get(m + ":cpu", timing[m]) if args.device == "cpu" else timing[m]
            )
            results[m]["tokens_per_s"] = shape["batch"] * shape["seq"] / results[m]["step_s"]
    ref = results.get("nodp", {})
    mem_key = "peak_gpu_mib" if args.device == "cuda" else "peak_rss_mib"
    print(f"device={args.device} shape={shape} micro={micro} steps={args.steps}")
    what = "cpu_s" if args.device == "cpu" else "step_s"
    print(
        f"{'mode':6} {what:>8} {'wall_s':>8} {'tok/s':>9} {'peak_mem_MiB':>13} "
        f"{'time_x':>7} {'mem_x':>6} {'step_mem_MiB':>13} {'step_mem_x':>10}"
    )
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode:6} ERROR {r['error']}")
            continue
        tx = r["step_s"] / ref["step_s"] if "step_s" in ref else float("nan")
        mx = r[mem_key] / ref[mem_key] if mem_key in ref else float("nan")
        # memory the training step itself adds on top of the loaded model
        base_key = "base_gpu_mib" if args.device == "cuda" else "rss_before_mib"
        dm = r[mem_key] - r.get(base_key, 0.0)
        dref = ref[mem_key] - ref.get(base_key, 0.0) if mem_key in ref else float("nan")
        print(
            f"{mode:6} {r['step_s']:8.4f} {r['wall_s']:8.4f} {r['tokens_per_s']:9.0f} "
            f"{r[mem_key]:13.1f} {tx:7.3f} {mx:6.3f} {dm:13.1f} {dm / dref:10.3f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
