"""A stand-in for vLLM's OpenAI server in the front-proxy tests (vLLM needs a GPU).

It is this project's own OpenAI route layer (the FastAPI app inside `build_app`, without
the gatekeeper) on plain-HTTP loopback, with the output filter OFF: it returns the
model's raw text, PII included, exactly as vLLM would, so the front must do the masking.

    python -m tests.serve.upstream_standin CONFIG PORT
"""

from __future__ import annotations

import io
import sys
import tempfile

import uvicorn

from sealtune_api.serve_config import ServeConfig
from sealtune_trainer.serve.apikeys import KeyStore
from sealtune_trainer.serve.app import build_app
from sealtune_trainer.serve.audit import AuditLog
from sealtune_trainer.serve.engine import Engine


def main(config_path: str, port: int) -> None:
    cfg = ServeConfig.load(config_path).model_copy(
        update={
            "pii_filter": ServeConfig.model_validate({"piiFilter": {"enabled": False}}).pii_filter
        }
    )
    import torch

    torch.set_num_threads(1)
    app = build_app(
        cfg,
        keys=KeyStore(tempfile.mkdtemp()),
        audit=AuditLog(cfg.audit, stream=io.StringIO()),
        loader=lambda: Engine.load(cfg),
    )
    api = app.fastapi
    api.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
