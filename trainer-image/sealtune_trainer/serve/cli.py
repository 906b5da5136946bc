"""`sealtune serve` and `sealtune apikey create`: argparse wiring, heavy imports deferred.

Flags override the config file (`--config`, default `/etc/sealtune/serve.json` when it
exists), which the operator renders from the ModelServe spec.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/sealtune/serve.json"


def register(subparsers: Any) -> None:
    """Add `serve` and `apikey` to the top-level `sealtune` parser."""
    serve = subparsers.add_parser(
        "serve", help="run the TLS-only, API-key-protected inference server"
    )
    serve.add_argument(
        "--config", help=f"JSON/YAML config file (default {DEFAULT_CONFIG} if present)"
    )
    serve.add_argument("--model-dir", help="base model directory (default /models)")
    serve.add_argument("--model-name", help="model id served on /v1/models (default sealtune)")
    serve.add_argument(
        "--adapter", dest="adapter_path", help="encrypted adapter path (default /adapters)"
    )
    serve.add_argument("--no-adapter", action="store_true", help="serve the base model alone")
    serve.add_argument("--adapter-key-file", help="adapter key file (default /keys/adapter/key)")
    serve.add_argument(
        "--upstream", dest="upstream_url", help="front-proxy mode: loopback backend URL (vLLM)"
    )
    serve.add_argument("--upstream-model", help="model name sent to the backend")
    serve.add_argument("--tls-dir", help="directory with tls.crt and tls.key (default /tls)")
    serve.add_argument("--api-keys-dir", help="directory of API-key hashes (default /apikeys)")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="HTTPS port (default 8443)")
    serve.add_argument("--rate-limit", type=float, help="requests per minute per key (default 60)")
    serve.add_argument(
        "--auth-failures-per-minute",
        type=float,
        help="failed authentications per client address and minute before 429 (default 30)",
    )
    serve.add_argument("--burst", type=int, help="token-bucket size per key (default: the rate)")
    serve.add_argument(
        "--max-concurrent-requests", type=int, help="inference requests admitted at once (32)"
    )
    serve.add_argument("--max-body-bytes", type=int, help="largest request body (default 1 MiB)")
    serve.add_argument("--max-tokens", type=int, help="largest max_tokens allowed (default 512)")
    serve.add_argument("--default-max-tokens", type=int, help="max_tokens when unset (default 16)")
    serve.add_argument("--pii-filter", choices=["on", "off"], help="output PII filter (default on)")
    serve.add_argument("--pii-entities", help="comma-separated entity types to mask (default all)")
    serve.add_argument("--audit-log", help="audit log file, '-' for stdout (default -)")
    serve.add_argument(
        "--log-prompts", action="store_true", help="log redacted prompts and completions"
    )
    serve.add_argument("--graceful-timeout", type=int, help="seconds to finish in-flight requests")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    serve.add_argument("--cpu-threads", type=int, help="torch threads on CPU")
    serve.set_defaults(func=run_serve)

    apikey = subparsers.add_parser("apikey", help="manage inference API keys")
    sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = sub.add_parser(
        "create",
        help="print a new API key once (stderr) and a Secret manifest with its hash (stdout)",
    )
    create.add_argument("--name", help="key id (lowercase letters, digits, '-'); random if unset")
    create.add_argument("--secret-name", default="sealtune-api-keys", help="Secret name")
    create.add_argument("--namespace", help="Secret namespace")
    create.set_defaults(func=run_apikey_create)

    adapter = subparsers.add_parser("adapter", help="encrypted adapter helpers")
    asub = adapter.add_subparsers(dest="adapter_command", required=True)
    unpack = asub.add_parser(
        "unpack",
        help="decrypt an adapter into a memory-backed directory (vLLM's init container)",
    )
    unpack.add_argument("--adapter", required=True, help="adapter.tar.enc or its directory")
    unpack.add_argument("--key-file", required=True, help="the adapter's key file")
    unpack.add_argument("--out", required=True, help="output directory (must be tmpfs)")
    unpack.add_argument(
        "--allow-disk",
        action="store_true",
        help="allow a non-memory-backed output directory (plaintext on disk: local tests only)",
    )
    unpack.set_defaults(func=run_adapter_unpack)


_SCALARS = {
    "model_dir": "model_dir",
    "model_name": "model_name",
    "adapter_path": "adapter_path",
    "adapter_key_file": "adapter_key_file",
    "tls_dir": "tls_dir",
    "api_keys_dir": "api_keys_dir",
    "host": "host",
    "port": "port",
    "max_body_bytes": "max_body_bytes",
    "max_concurrent_requests": "max_concurrent_requests",
    "upstream_url": "upstream_url",
    "upstream_model": "upstream_model",
    "auth_failures_per_minute": "auth_failures_per_minute",
    "max_tokens": "max_tokens",
    "default_max_tokens": "default_max_tokens",
    "graceful_timeout": "graceful_timeout_seconds",
    "device": "device",
    "dtype": "dtype",
    "cpu_threads": "cpu_threads",
}


def config_from_args(args: argparse.Namespace) -> Any:
    """The effective ServeConfig: file (if any) overlaid with the flags that were given."""
    from sealtune_api.serve_config import ServeConfig

    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    base = ServeConfig.load(path) if path else ServeConfig.model_validate({})
    data = base.model_dump()
    for flag, name in _SCALARS.items():
        value = getattr(args, flag, None)
        if value is not None:
            data[name] = value
    if args.no_adapter:
        data["adapter_path"] = None
    if args.rate_limit is not None:
        data["rate_limit"]["requests_per_minute"] = args.rate_limit
    if args.burst is not None:
        data["rate_limit"]["burst"] = args.burst
    if args.pii_filter is not None:
        data["pii_filter"]["enabled"] = args.pii_filter == "on"
    if args.pii_entities:
        data["pii_filter"]["entities"] = [
            e.strip() for e in args.pii_entities.split(",") if e.strip()
        ]
    if args.audit_log is not None:
        data["audit"]["path"] = args.audit_log
    if args.log_prompts:
        data["audit"]["log_prompts"] = True
    return ServeConfig.model_validate(data)


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of `sealtune serve`."""
    from pydantic import ValidationError

    from sealtune_trainer.serve.server import StartupError, serve

    try:
        cfg = config_from_args(args)
    except (ValidationError, OSError, ValueError) as exc:
        print(f"sealtune serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(cfg)
    except StartupError as exc:
        print(f"sealtune serve: {exc}", file=sys.stderr)
        return 2


def run_apikey_create(args: argparse.Namespace) -> int:
    """Entry point of `sealtune apikey create`."""
    from sealtune_trainer.serve.apikeys import ApiKeyError, create_key, secret_manifest

    try:
        key = create_key(args.name)
    except ApiKeyError as exc:
        print(f"sealtune apikey create: {exc}", file=sys.stderr)
        return 2
    print(
        f"API key (shown once, store it now): {key.key}\n"
        f"key id: {key.key_id}; the Secret below holds only its scrypt hash. To add it to an "
        f"existing Secret, merge its stringData entry.",
        file=sys.stderr,
    )
    sys.stdout.write(secret_manifest([key], secret_name=args.secret_name, namespace=args.namespace))
    return 0


def memory_backed(path: Path) -> bool:
    """True when `path` lies on tmpfs/ramfs, judged by the longest matching mount point."""
    target = path.resolve()
    while not target.exists():
        target = target.parent
    best, fstype = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, right.split()[0]
    return fstype in ("tmpfs", "ramfs")


def run_adapter_unpack(args: argparse.Namespace) -> int:
    """Entry point of `sealtune adapter unpack`: PEFT files into a tmpfs directory."""
    import os

    from sealtune_trainer import crypto
    from sealtune_trainer.output import CONFIG_NAME, WEIGHTS_NAME
    from sealtune_trainer.serve.adapter import AdapterError, decrypt_adapter_files

    out = Path(args.out)
    if not args.allow_disk and not memory_backed(out):
        print(
            f"sealtune adapter unpack: {out} is not memory-backed (tmpfs); refusing to write "
            "plaintext weights to disk (mount an emptyDir with medium: Memory)",
            file=sys.stderr,
        )
        return 2
    try:
        weights, config = decrypt_adapter_files(Path(args.adapter), crypto.load_key(args.key_file))
    except AdapterError as exc:
        print(f"sealtune adapter unpack: {exc}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for name, data in ((WEIGHTS_NAME, weights), (CONFIG_NAME, config)):
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o440)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    print(f"unpacked {WEIGHTS_NAME} and {CONFIG_NAME} into {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m sealtune_trainer.serve`), same commands as `sealtune`."""
    parser = argparse.ArgumentParser(prog="sealtune")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
