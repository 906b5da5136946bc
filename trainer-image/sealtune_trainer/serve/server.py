"""Run the server: TLS-only uvicorn with graceful shutdown.

There is no plaintext mode: without `tls.crt` and `tls.key` in the TLS directory the
server refuses to start. On SIGTERM uvicorn stops accepting connections and lets
in-flight requests (streams included) finish for up to `gracefulTimeoutSeconds`.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
from pathlib import Path

from sealtune_api.serve_config import ServeConfig

log = logging.getLogger("sealtune.serve")
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class StartupError(RuntimeError):
    """The server cannot start safely (message names the missing piece, never a secret)."""


def tls_files(cfg: ServeConfig) -> tuple[Path, Path]:
    """(certificate, key) paths; raises StartupError unless both are readable files."""
    directory = Path(cfg.tls_dir)
    cert, key = directory / "tls.crt", directory / "tls.key"
    for path in (cert, key):
        if not path.is_file() or not os.access(path, os.R_OK):
            raise StartupError(
                f"refusing to start without TLS: {path} is missing or unreadable "
                "(mount a kubernetes.io/tls Secret at the TLS directory)"
            )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError):
        raise StartupError(f"{directory}: tls.crt and tls.key are not a valid pair") from None
    return cert, key


def serve(cfg: ServeConfig) -> int:
    """Load everything, serve until SIGTERM/SIGINT; returns the process exit code."""
    # Refuse early, before the heavy imports, when the deployment is unsafe.
    cert, key = tls_files(cfg)
    if not Path(cfg.api_keys_dir).is_dir():
        raise StartupError(f"API-key directory {cfg.api_keys_dir} does not exist")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"

    import uvicorn

    from sealtune_trainer.serve.apikeys import KeyStore
    from sealtune_trainer.serve.app import build_app
    from sealtune_trainer.serve.audit import AuditLog
    from sealtune_trainer.serve.engine import Engine

    if cfg.cpu_threads:
        import torch

        torch.set_num_threads(cfg.cpu_threads)
    keys = KeyStore(cfg.api_keys_dir, reload_seconds=cfg.key_reload_seconds)
    if len(keys) == 0:
        log.warning("no API keys in %s: /readyz stays 503 until one is added", cfg.api_keys_dir)
    loader = None if cfg.upstream_url else (lambda: Engine.load(cfg))
    app = build_app(cfg, keys=keys, audit=AuditLog(cfg.audit), loader=loader)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=cfg.host,
            port=cfg.port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            # TLS 1.2+ (Python's default floor) and, for 1.2, only forward-secret AEAD suites.
            ssl_ciphers=TLS12_CIPHERS,
            timeout_graceful_shutdown=cfg.graceful_timeout_seconds,
            access_log=False,  # the audit log replaces it
            server_header=False,
            proxy_headers=False,
            lifespan="on",
            log_level="info",
        )
    )
    # uvicorn re-raises the signal that stopped it once it has drained; a no-op handler
    # turns a completed graceful shutdown into exit code 0 instead of death by SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    server.run()
    return 0 if server.started else 1


def _drained(signum: int, frame: object) -> None:
    log.info("shutdown complete (signal %d)", signum)
