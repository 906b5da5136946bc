"""Operator-wide settings, read once at start-up from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_TRAINER_IMAGE = "registry.local/sealtune/trainer:0.1.0"
DEFAULT_SERVE_IMAGE = "registry.local/sealtune/trainer:0.1.0"
DEFAULT_VLLM_IMAGE = "registry.local/vllm/vllm-openai:v0.11.0"


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class OperatorSettings:
    """What the render layer needs to know about the operator's environment."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    serve_image: str = DEFAULT_SERVE_IMAGE
    vllm_image: str = DEFAULT_VLLM_IMAGE
    # StorageClasses known to encrypt at rest; checkpoint PVCs must use one of them.
    encrypting_storage_classes: tuple[str, ...] = ("encrypted",)
    # Where the operator's own pods run, so trainer NetworkPolicies admit only them.
    operator_namespace: str = "sealtune-system"
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "sealtune-operator"}
    )
    trainer_metrics_port: int = 9090
    image_pull_secrets: tuple[str, ...] = ()
    # A trainer pod waiting longer than this to start is reported stuck (a Warning Event).
    pod_start_timeout_seconds: float = 600.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)
        defaults = cls()
        return cls(
            trainer_image=env.get("SEALTUNE_TRAINER_IMAGE", defaults.trainer_image),
            serve_image=env.get("SEALTUNE_SERVE_IMAGE", defaults.serve_image),
            vllm_image=env.get("SEALTUNE_VLLM_IMAGE", defaults.vllm_image),
            encrypting_storage_classes=_csv(
                env.get(
                    "SEALTUNE_ENCRYPTING_STORAGE_CLASSES",
                    ",".join(defaults.encrypting_storage_classes),
                )
            ),
            operator_namespace=env.get("SEALTUNE_OPERATOR_NAMESPACE", defaults.operator_namespace),
            image_pull_secrets=_csv(env.get("SEALTUNE_IMAGE_PULL_SECRETS", "")),
            pod_start_timeout_seconds=float(
                env.get("SEALTUNE_POD_START_TIMEOUT_SECONDS", defaults.pod_start_timeout_seconds)
            ),
        )


_current: OperatorSettings | None = None


def configure(settings: OperatorSettings) -> None:
    """Set the process's settings (the operator's `main` does, once, at start)."""
    global _current
    _current = settings


def current() -> OperatorSettings:
    """The process's settings (from the environment unless `configure`d)."""
    global _current
    if _current is None:
        _current = OperatorSettings.from_env()
    return _current
