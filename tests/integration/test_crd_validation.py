"""Invalid FineTuneJobs are rejected by the real API server with a message naming the field.

The schema (types, enums, bounds) and the CEL rules come from the pydantic models; these
cases prove the API server enforces them, no operator involved.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from tests.integration.conftest import Namespace, ftj_manifest

pytestmark = pytest.mark.integration


def _set(path: str, value: Any) -> Any:
    def apply(spec: dict[str, Any]) -> None:
        keys = path.split(".")
        node = spec
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is _DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value

    return apply


_DELETE = object()
IMAGE = {"reference": "registry.local/models/llama@sha256:" + "a" * 64}

# (case id, change to the valid example spec, text the API server's message must contain)
INVALID: list[tuple[str, Any, str]] = [
    ("no-model-source", _set("model", {}), "exactly one of pvc or image"),
    ("two-model-sources", _set("model.image", IMAGE), "exactly one of pvc or image"),
    (
        "image-not-pinned",
        _set("model", {"image": {"reference": "registry.local/m:latest"}}),
        "pinned by digest",
    ),
    ("bad-manifest-digest", _set("model.manifestSha256", "xyz"), "spec.model.manifestSha256"),
    ("epsilon-zero", _set("privacy.targetEpsilon", 0), "targetEpsilon must be greater than 0"),
    (
        "epsilon-negative",
        _set("privacy.targetEpsilon", -1.5),
        "targetEpsilon must be greater than 0",
    ),
    ("delta-zero", _set("privacy.delta", 0), "delta must be between 0 and 1"),
    ("delta-one", _set("privacy.delta", 1), "delta must be between 0 and 1"),
    ("delta-big", _set("privacy.delta", 3.5), "delta must be between 0 and 1"),
    ("grad-norm-zero", _set("privacy.maxGradNorm", 0), "spec.privacy.maxGradNorm"),
    ("bad-accountant", _set("privacy.accountant", "gdp"), "spec.privacy.accountant"),
    ("rank-zero", _set("training.rank", 0), "spec.training.rank"),
    ("rank-too-big", _set("training.rank", 512), "spec.training.rank"),
    ("bad-method", _set("training.method", "full"), "spec.training.method"),
    ("epochs-zero", _set("training.epochs", 0), "spec.training.epochs"),
    ("lr-negative", _set("training.learningRate", -0.1), "spec.training.learningRate"),
    ("no-target-modules", _set("training.targetModules", []), "spec.training.targetModules"),
    ("seq-too-short", _set("training.maxSeqLength", 2), "spec.training.maxSeqLength"),
    ("bad-format", _set("dataset.format", "csv"), "spec.dataset.format"),
    ("dataset-missing", _set("dataset", _DELETE), "spec.dataset"),
    (
        "secret-name-upper",
        _set("dataset.keySecret.name", "Clinical_Key"),
        "spec.dataset.keySecret.name",
    ),
    ("pvc-name-invalid", _set("output.pvc.claimName", "-adapters"), "spec.output.pvc.claimName"),
    ("pvc-path-escape", _set("dataset.pvc.path", "../other/notes.enc"), "spec.dataset.pvc.path"),
    (
        "storage-class-invalid",
        _set("checkpoints.storageClassName", "Fast SSD"),
        "spec.checkpoints.storageClassName",
    ),
    (
        "checkpoint-size-not-quantity",
        _set("checkpoints.size", "twenty gigs"),
        "spec.checkpoints.size",
    ),
    ("memory-not-quantity", _set("resources.memory", "lots"), "spec.resources.memory"),
    ("gpus-negative", _set("resources.gpus", -1), "spec.resources.gpus"),
    ("multi-node", _set("resources.nodes", 4), "spec.resources.nodes"),
    ("pii-unknown-entity", _set("pii.entities", ["EMAIL", "PASSPORT"]), "spec.pii.entities"),
    ("pii-bad-mode", _set("pii.mode", "encrypt"), "spec.pii.mode"),
    (
        "audit-auc-threshold",
        _set("audit.membershipAucThreshold", 0.2),
        "spec.audit.membershipAucThreshold",
    ),
    ("backoff-too-big", _set("backoffLimit", 100), "spec.backoffLimit"),
    ("deadline-too-short", _set("activeDeadlineSeconds", 5), "spec.activeDeadlineSeconds"),
    (
        "toleration-bad-effect",
        _set("scheduling.tolerations", [{"key": "gpu", "effect": "Never"}]),
        "spec.scheduling.tolerations[0].effect",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_finetunejob_rejected(
    namespace: Namespace, case: str, change: Any, message: str
) -> None:
    doc = ftj_manifest(f"bad-{case}")
    change(doc["spec"])
    proc = namespace.kubectl("apply", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr, proc.stderr
    assert namespace.get_or_none("finetunejob", f"bad-{case}") is None


def test_cases_cover_at_least_25() -> None:
    assert len(INVALID) >= 25


@pytest.mark.parametrize("section", ["model", "dataset", "training", "privacy"])
def test_sections_are_immutable_once_set(namespace: Namespace, section: str) -> None:
    doc = ftj_manifest(f"immutable-{section}")
    namespace.apply(doc)
    changed = copy.deepcopy(doc)
    changes = {
        "model": {"pvc": {"claimName": "other-models", "path": "x"}},
        "dataset": {**doc["spec"]["dataset"], "format": "text"},
        "training": {**doc["spec"]["training"], "rank": 8},
        "privacy": {**doc["spec"]["privacy"], "targetEpsilon": 100},
    }
    changed["spec"][section] = changes[section]
    proc = namespace.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {**changed, "metadata": {**changed["metadata"], "namespace": namespace.name}}
        ),
        check=False,
    )
    assert proc.returncode != 0
    assert f"spec.{section} is immutable once set" in proc.stderr, proc.stderr
    # Mutable sections still change.
    namespace.kubectl(
        "patch",
        "ftj",
        f"immutable-{section}",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"backoffLimit": 3}}),
    )
