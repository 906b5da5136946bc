"""The serving configuration: the JSON/YAML file the operator renders into a ConfigMap.

Light on purpose (pydantic only, no torch): the operator imports `ServeConfig` to render
`/etc/sealtune/serve.json`, and the CLI overlays its flags on top of the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import yaml
from pydantic import Field, model_validator

from sealtune_api.base import CamelModel
from sealtune_api.trainer_config import PII_ENTITIES, PiiEntity

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RateLimitConfig(CamelModel):
    """Per-API-key token bucket."""

    requests_per_minute: float = Field(
        60.0, gt=0, description="Sustained requests per minute allowed for each API key (> 0)."
    )
    burst: int | None = Field(
        None,
        ge=1,
        description="Bucket size: requests a key may send at once after being idle. "
        "Defaults to requestsPerMinute (rounded up, at least 1).",
    )


class OutputPiiConfig(CamelModel):
    """PII filter applied to every completion before it leaves the server."""

    enabled: bool = Field(True, description="Mask PII in model output (also in streams).")
    entities: list[PiiEntity] = Field(
        default_factory=lambda: cast(list[PiiEntity], list(PII_ENTITIES)),
        description="Entity types to mask: EMAIL, PHONE, CN_ID, BANK_CARD, IBAN, IP_ADDRESS, "
        "US_SSN.",
    )


class AuditLogConfig(CamelModel):
    """One JSON line per request."""

    path: str = Field(
        "-", description="Where audit lines go: `-` for stdout, otherwise a file path (appended)."
    )
    log_prompts: bool = Field(
        False,
        description="Also log prompts and completions, always PII-redacted. Off by default: "
        "audit lines then carry no request text at all.",
    )


class ServeConfig(CamelModel):
    """Everything `sealtune serve` needs; defaults match the operator's volume mounts."""

    model_dir: str = Field(
        "/models", description="Directory of the base model (safetensors + tokenizer)."
    )
    model_name: str = Field(
        "sealtune",
        min_length=1,
        description="Model id reported by /v1/models and accepted in requests.",
    )
    adapter_path: str | None = Field(
        "/adapters",
        description="Encrypted adapter (a directory or file written by the trainer); null "
        "serves the base model alone.",
    )
    adapter_key_file: str = Field(
        "/keys/adapter/key", description="File holding the adapter's 32-byte key (raw or base64)."
    )
    upstream_url: str | None = Field(
        None,
        description="Front-proxy mode: an OpenAI-compatible backend on loopback (vLLM in the same "
        "pod, e.g. http://127.0.0.1:8000). No model is loaded here; auth, limits, the PII filter "
        "and the audit log still apply.",
    )
    upstream_model: str | None = Field(
        None, description="Model name sent to the backend (vLLM's LoRA module); default modelName."
    )
    upstream_health_path: str = Field(
        "/health", description="Backend route that answers 200 when it is ready (vLLM: /health)."
    )
    upstream_timeout_seconds: float = Field(
        300.0, gt=0, description="Longest a backend call may take."
    )
    merge_adapter: bool = Field(
        True, description="Merge the LoRA weights into the base model in memory (faster decoding)."
    )
    tls_dir: str = Field(
        "/tls", description="Directory with `tls.crt` and `tls.key` (a TLS Secret)."
    )
    api_keys_dir: str = Field(
        "/apikeys",
        description="Directory of API-key hashes, one file per key id (a Secret volume).",
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8443, ge=1, le=65535, description="HTTPS port.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: `auto` picks CUDA when available."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: `auto` is bfloat16 on CUDA and float32 on CPU."
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig.model_validate({}),
        description="Per-key rate limit (429 with Retry-After).",
    )
    auth_failures_per_minute: float = Field(
        30.0,
        gt=0,
        description="Failed authentications allowed per client address and minute; beyond "
        "that the address gets 429 without its key being checked (no scrypt work).",
    )
    max_concurrent_requests: int = Field(
        32,
        ge=1,
        description="Inference requests admitted at once (decoding is one sequence at a time; "
        "the rest wait). Beyond this the server answers 503 with Retry-After.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body in bytes (413 beyond)."
    )
    max_tokens: int = Field(
        512, ge=1, description="Largest `max_tokens` a request may ask for (400 beyond)."
    )
    default_max_tokens: int = Field(
        16, ge=1, description="`max_tokens` used when a request does not set it."
    )
    pii_filter: OutputPiiConfig = Field(
        default_factory=lambda: OutputPiiConfig.model_validate({}), description="Output PII filter."
    )
    audit: AuditLogConfig = Field(
        default_factory=lambda: AuditLogConfig.model_validate({}), description="Audit log settings."
    )
    graceful_timeout_seconds: int = Field(
        30, ge=1, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads on CPU (default: torch's choice)."
    )
    key_reload_seconds: float = Field(
        10.0, ge=0, description="How often the API-key directory is re-read (key rotation)."
    )

    @model_validator(mode="after")
    def _check_limits(self) -> ServeConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("defaultMaxTokens must not exceed maxTokens")
        if self.upstream_url is not None:
            url = urlsplit(self.upstream_url)
            if url.scheme != "http" or url.hostname not in _LOOPBACK or url.path not in ("", "/"):
                raise ValueError(
                    "upstreamUrl must be http://127.0.0.1:<port> (or localhost/[::1]): the "
                    "backend runs in the same pod and nothing leaves it"
                )
        return self

    @classmethod
    def load(cls, path: str | Path) -> ServeConfig:
        """Read a JSON or YAML config file (camelCase keys)."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            data: Any = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON at line {exc.lineno}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ValueError(f"{path}: not valid YAML{where}") from None
        return cls.model_validate(data or {})
