"""`make bundle` (hack/bundle.sh): the offline tarball an air-gapped team carries in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import CHART, REPO, load_all, run_helm

INTERNAL = "mirror.bank.internal:5000"
OPERATOR_DIGEST = "sha256:" + "1" * 64
TRAINER_DIGEST = "sha256:" + "2" * 64
VLLM_DIGEST = "sha256:" + "3" * 64
EXPECTED_FILES = {
    "SHA256SUMS",
    "chart/sealtune-0.1.0.tgz",
    "crds/kopf-peering.yaml",
    "crds/sealtune.io_finetunejobs.yaml",
    "crds/sealtune.io_modelserves.yaml",
    "crds/sealtune.io_privacybudgets.yaml",
    "images.txt",
    "values-internal-registry.yaml",
    "sbom/sealtune-python.cdx.json",
    "argocd/argocd-cm.yaml",
    "argocd/health-finetunejob.lua",
    "argocd/health-modelserve.lua",
    "argocd/application-operator.yaml",
    "argocd/application-finetunejobs.yaml",
    "docs/install-airgapped.md",
    "docs/gitops.md",
}


def run_bundle(out: Path, digests: str) -> subprocess.CompletedProcess[str]:
    (out / "digests.txt").write_text(digests)
    env = {
        **os.environ,
        "OUT": str(out),
        "IMAGE_DIGESTS": str(out / "digests.txt"),
        "INTERNAL_REGISTRY": INTERNAL,
        "PYTHON": sys.executable,
        "PATH": os.environ["PATH"],
    }
    return subprocess.run(
        ["bash", str(REPO / "hack" / "bundle.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked bundle built with digests the release pipeline would provide."""
    out = tmp_path_factory.mktemp("dist")
    proc = run_bundle(
        out,
        "# from the image build\n"
        f"sealtune/sealtune-operator {OPERATOR_DIGEST}\n"
        f"sealtune/sealtune-trainer {TRAINER_DIGEST}\n"
        f"vllm/vllm-openai {VLLM_DIGEST}\n",
    )
    assert proc.returncode == 0, proc.stderr
    tarball = Path(proc.stdout.strip().splitlines()[-1])
    assert tarball == out / "sealtune-bundle-0.1.0.tar.gz"
    line = (out / "sealtune-bundle-0.1.0.tar.gz.sha256").read_text().split()
    assert line == [hashlib.sha256(tarball.read_bytes()).hexdigest(), tarball.name]
    dest = out / "unpacked"
    with tarfile.open(tarball) as tf:
        for m in tf.getmembers():
            assert m.uid == 0 and m.gid == 0 and not m.name.startswith(("/", ".."))
        tf.extractall(dest, filter="data")
    return dest / "sealtune-bundle-0.1.0"


def test_bundle_has_every_part_and_checksums_verify(bundle: Path) -> None:
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    examples = {f"examples/{p.name}" for p in (REPO / "examples").glob("*.yaml")}
    assert "examples/finetunejob.yaml" in examples
    assert files == EXPECTED_FILES | examples
    sums = {}
    for line in (bundle / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name] = digest
    assert set(sums) == files - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest, name
    # The same check a user runs inside the network.
    subprocess.run(["sha256sum", "--check", "--quiet", "SHA256SUMS"], cwd=bundle, check=True)
    for crd in (REPO / "crds").glob("*.yaml"):
        assert (bundle / "crds" / crd.name).read_bytes() == crd.read_bytes()


def test_image_list_is_pinned_and_mirrors_into_the_internal_registry(bundle: Path) -> None:
    lines = [
        line.split()
        for line in (bundle / "images.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == [
        [
            f"ghcr.io/sealtune/sealtune-operator:0.1.0@{OPERATOR_DIGEST}",
            f"{INTERNAL}/sealtune/sealtune-operator:0.1.0",
        ],
        [
            f"ghcr.io/sealtune/sealtune-trainer:0.1.0@{TRAINER_DIGEST}",
            f"{INTERNAL}/sealtune/sealtune-trainer:0.1.0",
        ],
        [
            f"docker.io/vllm/vllm-openai:v0.11.0@{VLLM_DIGEST}",
            f"{INTERNAL}/vllm/vllm-openai:v0.11.0",
        ],
    ]


def test_packaged_chart_with_bundle_values_runs_only_pinned_internal_images(
    bundle: Path, helm: Path
) -> None:
    values = bundle / "values-internal-registry.yaml"
    assert yaml.safe_load(values.read_text())["global"]["imageRegistry"] == INTERNAL
    chart = bundle / "chart" / "sealtune-0.1.0.tgz"
    run_helm(helm, "lint", "--strict", str(chart), "-f", str(values))
    docs = load_all(
        run_helm(
            helm, "template", "sealtune", str(chart), "-n", "sealtune-system", "-f", str(values)
        ).stdout
    )
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == f"{INTERNAL}/sealtune/sealtune-operator:0.1.0@{OPERATOR_DIGEST}"
    assert env["SEALTUNE_TRAINER_IMAGE"] == (
        f"{INTERNAL}/sealtune/sealtune-trainer:0.1.0@{TRAINER_DIGEST}"
    )
    assert env["SEALTUNE_SERVE_IMAGE"] == env["SEALTUNE_TRAINER_IMAGE"]
    assert env["SEALTUNE_VLLM_IMAGE"] == f"{INTERNAL}/vllm/vllm-openai:v0.11.0@{VLLM_DIGEST}"
    # The packaged chart carries the CRDs and the schema.
    with tarfile.open(chart) as tf:
        names = set(tf.getnames())
    assert {
        "sealtune/crds/sealtune.io_finetunejobs.yaml",
        "sealtune/crds/sealtune.io_modelserves.yaml",
        "sealtune/crds/kopf-peering.yaml",
        "sealtune/values.schema.json",
    } <= names
    assert not any(n.startswith("sealtune/tests/") for n in names)
    assert (CHART / "values.schema.json").exists()


def test_sbom_is_cyclonedx_of_the_runtime_dependencies(bundle: Path) -> None:
    bom: dict[str, Any] = json.loads((bundle / "sbom" / "sealtune-python.cdx.json").read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] >= "1.5"
    assert bom["metadata"]["component"]["name"] == "sealtune"
    comps = {c["name"].lower().replace("_", "-"): c for c in bom["components"]}
    for name in ("kopf", "kubernetes", "pydantic", "cryptography", "torch", "peft", "opacus"):
        assert comps[name]["version"] == metadata.version(name), name
        assert comps[name]["purl"] == f"pkg:pypi/{name}@{metadata.version(name)}"
    for dev_only in ("pytest", "ruff", "mypy", "hypothesis", "cyclonedx-bom"):
        assert dev_only not in comps, dev_only
    refs = {c["bom-ref"] for c in bom["components"]}
    for dep in bom["dependencies"]:
        assert dep["ref"] in refs | {"root-component"}
        assert set(dep.get("dependsOn", [])) <= refs


def test_missing_digest_fails_without_a_bundle(tmp_path: Path) -> None:
    proc = run_bundle(tmp_path, f"sealtune/sealtune-operator {OPERATOR_DIGEST}\n")
    assert proc.returncode != 0
    assert "no digest for: trainerImage" in proc.stderr
    assert "IMAGE_DIGESTS" in proc.stderr
    assert not list(tmp_path.glob("*.tar.gz"))
