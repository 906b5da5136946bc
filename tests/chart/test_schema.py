"""values.schema.json: Helm refuses bad values before rendering, naming the value."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.chart.chartlib import CHART, NAMESPACE, run_helm

# (--set argument, text the error must contain: the JSON pointer of the bad value)
INVALID: list[tuple[str, str]] = [
    ("replicaCount=0", "/replicaCount"),
    ("image.digest=sha256:abc", "/image/digest"),
    ("image.digest=md5:" + "0" * 32, "/image/digest"),
    ("trainerImage.tag=latest", "/trainerImage/tag"),
    ("serveImage.repository=", "/serveImage/repository"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("global.imageRegistry=https://registry.example", "/global/imageRegistry"),
    ("watchNamespaces={Bad_Namespace}", "/watchNamespaces/0"),
    ("encryptingStorageClasses={UPPER}", "/encryptingStorageClasses/0"),
    ("workloadImagePullSecrets={Not_A_Name}", "/workloadImagePullSecrets/0"),
    ("metrics.port=70000", "/metrics/port"),
    ("networkPolicy.apiServer.cidrs={10.0.0.1}", "/networkPolicy/apiServer/cidrs/0"),
    ("networkPolicy.apiServer.ports=null", "missing property 'ports'"),
    ("networkPolicy.apiServer.ports={}", "/networkPolicy/apiServer/ports"),
    ("monitoring.serviceMonitor.interval=often", "/monitoring/serviceMonitor/interval"),
    ("admissionPolicy.extraAllowedUsers={a'b}", "/admissionPolicy/extraAllowedUsers/0"),
    ("crds.manageAsTemplates=maybe", "/crds/manageAsTemplates"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
    ("networkPolicy.egress=open", "additional properties 'egress' not allowed"),
]


@pytest.mark.parametrize(("setting", "expected"), INVALID, ids=[s for s, _ in INVALID])
def test_invalid_values_rejected(helm: Path, setting: str, expected: str) -> None:
    proc = run_helm(
        helm, "template", "sealtune", str(CHART), "-n", NAMESPACE, "--set", setting, check=False
    )
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_schema_covers_every_default_value(helm: Path) -> None:
    """Every top-level key in values.yaml is described by the schema (and vice versa)."""
    import json

    import yaml

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
    assert schema["additionalProperties"] is False
