"""What does the hardening of `sealtune serve` cost per request?

Two servers load the same tiny model and the same encrypted LoRA adapter and call the same
`Engine.generate`:

- **full**: the real `sealtune serve` process: TLS, API-key check, per-key rate limit,
  body/max_tokens limits, output PII filter, audit log (to a file), metrics;
- **bare**: a minimal FastAPI app with one route on plain-HTTP loopback: no auth, no
  limits, no filter, no audit.

A client sends the same greedy completion request to each, in alternating blocks (so
machine-load drift hits both alike), over one keep-alive connection per server, and
reports requests/s and p50/p99 latency, and full/bare ratios. Target: <= 10% at p50.

    python benchmarks/serve_overhead.py [--requests 300] [--max-tokens 16]
"""

import argparse
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODEL_NAME = "bench"
PROMPT = "The patient was admitted with fever and"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assets(root: Path, threads: int) -> dict[str, Any]:
    """Tiny model, encrypted random LoRA adapter, TLS material, one API key."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sealtune_devkit.devtls import write_self_signed_tls
    from sealtune_devkit.tinymodel import make_tiny_llama
    from sealtune_trainer import crypto
    from sealtune_trainer.output import write_encrypted_adapter
    from sealtune_trainer.serve.apikeys import create_key

    torch.set_num_threads(threads)
    model_dir = make_tiny_llama(root / "models", seed=0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    peft = get_peft_model(
        base,
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                   init_lora_weights=False),
    )  # fmt: skip
    key = crypto.generate_key()
    (root / "adapter.key").write_bytes(key)
    adapters = root / "adapters"
    write_encrypted_adapter(peft, adapters, key)  # the trainer's own output format
    ca = write_self_signed_tls(root / "tls")
    keys = root / "apikeys"
    keys.mkdir()
    api_key = create_key("bench")
    (keys / "bench").write_text(api_key.hash_line)
    cfg = {
        "modelDir": str(model_dir),
        "modelName": MODEL_NAME,
        "adapterPath": str(adapters),
        "adapterKeyFile": str(root / "adapter.key"),
        "tlsDir": str(root / "tls"),
        "apiKeysDir": str(keys),
        "host": "127.0.0.1",
        "port": _free_port(),
        "rateLimit": {"requestsPerMinute": 1_000_000},
        "piiFilter": {"enabled": True},
        "audit": {"path": str(root / "audit.log"), "logPrompts": False},
        "cpuThreads": threads,
    }
    (root / "serve.json").write_text(json.dumps(cfg))
    return {"config": root / "serve.json", "ca": ca, "key": api_key.key, "port": cfg["port"]}


def bare_server(config_path: str, port: int) -> None:
    """The baseline: same engine and generate call, nothing else (plain HTTP, loopback)."""
    import anyio
    import torch
    import uvicorn
    from fastapi import FastAPI, Request

    from sealtune_api.serve_config import ServeConfig
    from sealtune_trainer.serve.engine import Engine, SamplingParams

    cfg = ServeConfig.load(config_path)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    engine = Engine.load(cfg)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        params = SamplingParams(
            max_tokens=int(body.get("max_tokens", 16)),
            temperature=float(body.get("temperature", 1.0)),
        )
        ids = engine.encode_prompt(body["prompt"])
        gen = await anyio.to_thread.run_sync(engine.generate, ids, params)
        return {
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [{"text": gen.text, "index": 0, "finish_reason": gen.finish_reason}],
            "usage": {"prompt_tokens": gen.prompt_tokens,
                      "completion_tokens": gen.completion_tokens},
        }  # fmt: skip

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _wait(client: httpx.Client, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready:\n{log.read_text()}")


def _timed(client: httpx.Client, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    r = client.post("/v1/completions", json=body)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"unexpected {r.status_code}: {r.text[:200]}")
    return elapsed


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per server")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured requests per server")
    parser.add_argument("--block", type=int, default=25, help="requests per alternating block")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server")
    parser.add_argument("--json", help="also write the results as JSON here")
    parser.add_argument(
        "--bare-server", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]))
        return 0

    with tempfile.TemporaryDirectory(prefix="sealtune-bench-") as tmp:
        root = Path(tmp)
        a = _assets(root, args.threads)
        bare_port = _free_port()
        full = _spawn(
            [sys.executable, "-m", "sealtune_trainer.serve", "serve", "--config", str(a["config"])],
            root / "full.log",
        )
        bare = _spawn(
            [sys.executable, __file__, "--bare-server", str(a["config"]), str(bare_port)],
            root / "bare.log",
        )
        tls = ssl.create_default_context(cafile=str(a["ca"]))
        clients = {
            "full": httpx.Client(
                base_url=f"https://127.0.0.1:{a['port']}", verify=tls, timeout=60,
                headers={"authorization": f"Bearer {a['key']}"},
            ),
            "bare": httpx.Client(base_url=f"http://127.0.0.1:{bare_port}", timeout=60),
        }  # fmt: skip
        try:
            _wait(clients["full"], "/readyz", full, root / "full.log")
            _wait(clients["bare"], "/healthz", bare, root / "bare.log")
            body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": args.max_tokens,
                    "temperature": 0}  # fmt: skip
            outputs = {}
            for name, c in clients.items():
                first = c.post("/v1/completions", json=body)
                if first.status_code != 200:
                    raise SystemExit(f"{name}: {first.status_code} {first.text[:300]}")
                outputs[name] = first.json()["choices"][0]["text"]
            if outputs["full"] != outputs["bare"]:
                raise SystemExit("the two servers disagree on the completion: not comparable")
            for c in clients.values():
                for _ in range(args.warmup):
                    _timed(c, body)
            lat: dict[str, list[float]] = {"bare": [], "full": []}
            busy: dict[str, float] = {"bare": 0.0, "full": 0.0}
            while len(lat["full"]) < args.requests:
                n = min(args.block, args.requests - len(lat["full"]))
                for name in ("bare", "full"):
                    start = time.perf_counter()
                    lat[name] += [_timed(clients[name], body) for _ in range(n)]
                    busy[name] += time.perf_counter() - start
            audit_lines = sum(1 for _ in (root / "audit.log").open())
        finally:
            for c in clients.values():
                c.close()
            for p in (full, bare):
                p.send_signal(signal.SIGTERM)
            for p in (full, bare):
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()

    rows = {}
    for name in ("bare", "full"):
        rows[name] = {
            "requests": len(lat[name]),
            "rps": len(lat[name]) / busy[name],
            "p50_ms": _pct(lat[name], 0.50) * 1000,
            "p99_ms": _pct(lat[name], 0.99) * 1000,
            "mean_ms": statistics.fmean(lat[name]) * 1000,
        }
    ratio = {k: rows["full"][k] / rows["bare"][k] for k in ("rps", "p50_ms", "p99_ms", "mean_ms")}
    overhead_p50 = (ratio["p50_ms"] - 1) * 100
    print(
        f"tiny Llama (hidden 64, 2 layers), {args.max_tokens} tokens/request, greedy, 1 client, "
        f"keep-alive, torch threads {args.threads}, {args.requests} requests each"
    )
    print(f"{'server':<8}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for name, row in rows.items():
        print(f"{name:<8}{row['rps']:>9.1f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
              f"{row['mean_ms']:>10.2f}")  # fmt: skip
    print(f"{'full/bare':<8}{ratio['rps']:>9.3f}{ratio['p50_ms']:>10.3f}{ratio['p99_ms']:>10.3f}"
          f"{ratio['mean_ms']:>10.3f}")  # fmt: skip
    verdict = "PASS" if overhead_p50 <= 10 else "FAIL"
    print(f"p50 overhead: {overhead_p50:+.1f}% (target <= 10%): {verdict}; "
          f"audit lines written: {audit_lines}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "ratio": ratio, "overhead_p50_pct": overhead_p50,
                        "max_tokens": args.max_tokens, "audit_lines": audit_lines}, indent=2)
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
