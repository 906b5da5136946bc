"""Generate CustomResourceDefinitions from the pydantic spec models.

pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3
subset: no `$ref`, no `anyOf` for optionals, boolean `exclusiveMinimum`, and an explicit
`x-kubernetes-preserve-unknown-fields` wherever unknown keys must survive. `structural()`
does that translation; `crds()` wraps the schemas into CRD objects. `hack/gen_crds.py`
writes them to `crds/`, and a test regenerates and compares.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from sealtune_api.finetunejob import GROUP, VERSION, FineTuneJobSpec, FineTuneJobStatus
from sealtune_api.modelserve import ModelServeSpec, ModelServeStatus
from sealtune_api.privacybudget import PrivacyBudgetSpec, PrivacyBudgetStatus

Schema = dict[str, Any]

_DROP_KEYS = {"title", "$defs"}


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    """Inline `$ref`s, collapse nullable `anyOf`s and drop JSON-Schema-only keys."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        merged = copy.deepcopy(defs[name])
        # A field's own description/rules win over the referenced model's.
        for key, value in schema.items():
            if key == "$ref":
                continue
            if key == "x-kubernetes-validations":
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = value
        return _resolve(merged, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in schema: {schema}")
        merged = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
        if merged.get("default", 0) is None:
            del merged["default"]
        return _resolve(merged, defs)
    out: Schema = {}
    for key, value in schema.items():
        if key in _DROP_KEYS or (key == "additionalProperties" and value is False):
            # Structural schemas forbid `additionalProperties: false`; the API server
            # prunes unknown fields anyway.
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _resolve(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural(model: type[BaseModel]) -> Schema:
    """The model's schema as a structural OpenAPI v3 schema with camelCase names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _resolve(raw, raw.get("$defs", {}))


def _status_schema(model: type[BaseModel]) -> Schema:
    # Only the declared fields: the operator runs Kopf with event handlers only, so Kopf
    # keeps no bookkeeping in the object (an older operator's `status.kopf` is pruned).
    schema = structural(model)
    schema.pop("additionalProperties", None)
    return schema


def _crd(
    kind: str,
    short: str,
    description: str,
    models: tuple[type[BaseModel], type[BaseModel]],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """The CRD of a kind from its spec and status models (plural: the kind + s)."""
    plural = f"{kind.lower()}s"
    spec, status = structural(models[0]), _status_schema(models[1])
    return _definition(
        f"{plural}.{GROUP}",
        {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["sealtune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    )


def _column(name: str, type_: str, path: str, description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_}
    if description:
        column["description"] = description
    return {**column, "jsonPath": path}


def _columns(*columns: tuple[str, str, str, str]) -> list[dict[str, Any]]:
    """Phase and the `Ready` condition's reason first, its message last (every kind)."""
    ready = '.status.conditions[?(@.type=="Ready")]'
    return [
        _column("Phase", "string", ".status.phase"),
        _column("Reason", "string", f"{ready}.reason", "Why the object is in its phase"),
        *(_column(*c) for c in columns),
        _column("Age", "date", ".metadata.creationTimestamp"),
        _column("Message", "string", f"{ready}.message", "What the phase means now"),
    ]


def finetunejob_crd() -> dict[str, Any]:
    description = (
        "A differentially private LoRA/QLoRA fine-tune of a base model on encrypted data, "
        "run in an isolated, hardened trainer pod."
    )
    progress = (
        "Progress",
        "integer",
        ".status.progress.percent",
        "Percent of optimizer steps done",
    )
    epsilon = ("Epsilon", "number", ".status.privacy.epsilonSpent", "Privacy budget spent")
    models = (FineTuneJobSpec, FineTuneJobStatus)
    return _crd("FineTuneJob", "ftj", description, models, _columns(progress, epsilon))


def modelserve_crd() -> dict[str, Any]:
    description = (
        "A TLS-only, API-key-protected, network-isolated inference service for a fine-tuned "
        "LoRA adapter."
    )
    ready = ("Ready", "integer", ".status.readyReplicas", "Serving pods ready")
    endpoint = ("Endpoint", "string", ".status.endpoint", "In-cluster address of the service")
    return _crd(
        "ModelServe",
        "ms",
        description,
        (ModelServeSpec, ModelServeStatus),
        _columns(ready, endpoint),
    )


def privacybudget_crd() -> dict[str, Any]:
    description = (
        "An epsilon/delta budget for one dataset (by the sha256 of its encrypted file), "
        "charged by every FineTuneJob on it before the job starts."
    )
    columns = [
        _column("Dataset", "string", ".spec.datasetSha256", "sha256 of the encrypted dataset"),
        _column("Epsilon", "number", ".spec.epsilon", "The budget"),
        _column("Spent", "number", ".status.spentEpsilon", "Charged by admitted jobs"),
        _column("Remaining", "number", ".status.remainingEpsilon", "Left for new jobs"),
        _column("Age", "date", ".metadata.creationTimestamp"),
    ]
    return _crd(
        "PrivacyBudget", "pb", description, (PrivacyBudgetSpec, PrivacyBudgetStatus), columns
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object, for everything in `crds/`."""
    return {
        "sealtune.io_finetunejobs.yaml": finetunejob_crd(),
        "sealtune.io_modelserves.yaml": modelserve_crd(),
        "sealtune.io_privacybudgets.yaml": privacybudget_crd(),
    }


def dump(obj: dict[str, Any]) -> str:
    header = "# Generated by hack/gen_crds.py from the pydantic spec models. Do not edit.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=100)


def _definition(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A CustomResourceDefinition object, labelled as part of Sealtune."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "sealtune"}},
        "spec": spec,
    }


def _peering_crd(kind: str, plural: str, scope: str) -> dict[str, Any]:
    """Kopf's peering CRDs: replicas of the operator see each other and only one acts."""
    return _definition(
        f"{plural}.kopf.dev",
        {
            "scope": scope,
            "group": "kopf.dev",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    )


def peering_crds() -> list[dict[str, Any]]:
    return [
        _peering_crd("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
        _peering_crd("KopfPeering", "kopfpeerings", "Namespaced"),
    ]


def rendered_files() -> dict[str, str]:
    """File name -> YAML text of everything generated into `crds/`."""
    files = {name: dump(crd) for name, crd in all_crds().items()}
    header = "# Generated by hack/gen_crds.py (Kopf's peering CRDs). Do not edit.\n"
    files["kopf-peering.yaml"] = header + "---\n".join(
        yaml.safe_dump(c, sort_keys=False, width=100) for c in peering_crds()
    )
    return files
