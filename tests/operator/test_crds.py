"""crds/ is generated from the spec models; any drift fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sealtune_api.crdgen import finetunejob_crd, modelserve_crd, rendered_files

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


@pytest.mark.parametrize("crd", [finetunejob_crd, modelserve_crd], ids=lambda f: f.__name__)
def test_every_spec_field_has_a_description_and_no_refs(crd: Any) -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        assert "$ref" not in node and "anyOf" not in node, path
        if not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_status_has_no_kopf_bookkeeping_and_printer_columns_explain_the_phase() -> None:
    """Invariant 8 (bookkeeping only in our own status fields) and review F8 (no
    REASON/MESSAGE columns): both kinds show the `Ready` condition's reason and message."""
    for crd, middle in (
        (finetunejob_crd(), ["Progress", "Epsilon"]),
        (modelserve_crd(), ["Ready", "Endpoint"]),
    ):
        version = crd["spec"]["versions"][0]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert "kopf" not in status["properties"]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert list(columns) == ["Phase", "Reason", *middle, "Age", "Message"]
        ready = '.status.conditions[?(@.type=="Ready")]'
        assert columns["Reason"]["jsonPath"] == f"{ready}.reason"
        assert columns["Message"]["jsonPath"] == f"{ready}.message"
        assert "attempts" in status["properties"] or crd["spec"]["names"]["kind"] == "ModelServe"
    assert finetunejob_crd()["spec"]["names"]["shortNames"] == ["ftj"]


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
