"""crds/ is generated from the spec models; any drift fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sealtune_api.crdgen import finetunejob_crd, rendered_files

REPO = Path(__file__).resolve().parents[2]


def test_crds_match_the_models() -> None:
    for target in (REPO / "crds", REPO / "charts" / "sealtune" / "crds"):
        for name, text in rendered_files().items():
            path = target / name
            assert path.exists(), f"{path} missing: run `make crds`"
            assert path.read_text() == text, f"{path} is stale: run `make crds`"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    return out


def test_every_spec_field_has_a_description_and_no_refs() -> None:
    spec = finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    for path, node in _walk(spec, "spec"):
        assert "$ref" not in node and "anyOf" not in node, path
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_status_keeps_kopf_fields_and_printer_columns() -> None:
    crd = finetunejob_crd()
    version = crd["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Progress",
        "Epsilon",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]


def test_cel_rules_present_for_what_a_schema_cannot_say() -> None:
    text = yaml.safe_dump(finetunejob_crd())
    for rule in (
        "self == oldSelf",
        "self.targetEpsilon > 0.0",
        "self.delta < 1.0",
        "has(self.pvc) ? 1 : 0",
        "dns1123Subdomain",
        "isQuantity(self)",
    ):
        assert rule in text, rule
