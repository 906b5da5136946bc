"""`sealtune train`: FineTuneJob YAML -> TrainerConfig mapping, field-naming errors, and the
demo, which runs the real `sealtune train` on a generated job end to end."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.trainer.trainerkit import REPO, trainer_env

from sealtune_trainer.train_cli import JobSpecError, load_job_yaml, trainer_config_from_job


def test_example_job_maps_pvcs_and_secrets(tmp_path: Path) -> None:
    doc = load_job_yaml(REPO / "examples" / "finetunejob.yaml")
    cfg = trainer_config_from_job(doc, tmp_path / "v", tmp_path / "s")
    spec = doc["spec"]
    model = spec["model"]["pvc"]
    assert cfg.model_dir == str(tmp_path / "v" / model["claimName"] / model["path"])
    ds = spec["dataset"]
    assert cfg.dataset.path == str(tmp_path / "v" / ds["pvc"]["claimName"] / ds["pvc"]["path"])
    key = ds["keySecret"].get("key", "key")
    assert cfg.dataset.key_file == str(tmp_path / "s" / ds["keySecret"]["name"] / key)
    assert cfg.dataset.format == ds["format"]
    assert cfg.training.batch_size == spec["training"]["batchSize"]
    assert cfg.privacy.target_epsilon == spec["privacy"]["targetEpsilon"]
    assert cfg.checkpoint_interval_steps == spec["checkpoints"]["intervalSteps"]
    ckpt_key = Path(cfg.checkpoint_key_file)
    assert ckpt_key.stat().st_size == 32 and oct(ckpt_key.stat().st_mode)[-3:] == "400"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("training", "rank"), 0, "spec.training.rank"),
        (("privacy", "delta"), 2, "spec.privacy"),
        (("pii", "entities"), ["NAME"], "spec.pii.entities.0"),
        (("training", "learningRatee"), 1, "spec.training.learningRatee"),
    ],
)
def test_invalid_sections_name_the_field(
    tmp_path: Path, path: tuple[str, str], value: object, expected: str
) -> None:
    doc = copy.deepcopy(load_job_yaml(REPO / "examples" / "finetunejob.yaml"))
    doc["spec"].setdefault(path[0], {})[path[1]] = value
    with pytest.raises(JobSpecError, match=expected.replace(".", r"\.")):
        trainer_config_from_job(doc, tmp_path, tmp_path)


def test_escaping_volume_path_rejected(tmp_path: Path) -> None:
    doc = copy.deepcopy(load_job_yaml(REPO / "examples" / "finetunejob.yaml"))
    doc["spec"]["dataset"]["pvc"]["path"] = "../../etc/passwd"
    with pytest.raises(JobSpecError, match=r"spec\.dataset\.pvc\.path"):
        trainer_config_from_job(doc, tmp_path, tmp_path)


def test_demo_runs_sealtune_train_and_proves_ciphertext_only(tmp_path: Path) -> None:
    """The demo at a small size: public pretraining, DP and non-DP `sealtune train`, public
    evaluation, the ledger and the lower bound in the report, ciphertext only on disk."""
    import json

    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sealtune_devkit.demo",
            "--out",
            str(out),
            "--records",
            "64",
            "--epochs",
            "1",
            "--batch",
            "16",
            "--canaries",
            "16",  # the least that gives the one-run lower bound
            "--canary-repetitions",
            "1",
            "--pretrain-steps",
            "150",
            "--pretrain-docs",
            "1500",
            "--eval-records",
            "40",
        ],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ciphertext check:" in proc.stdout and "no plaintext marker found" in proc.stdout
    assert "epsilon spent (target)" in proc.stdout
    assert "privacy ledger" in proc.stdout and "- adapter: DP-SGD" in proc.stdout
    assert "epsilon lower bound (one run, 95%)" in proc.stdout
    assert "eval loss base -> DP -> non-DP" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["ledger"] and report["ledger"][0]["statistic"] == "adapter"
    assert report["ledger"][0]["epsilon"] is not None
    # the bound is computed (>= 16 canaries) and a working DP implementation stays below epsilon
    assert report["epsilonLowerBound"] is not None
    assert 0.0 <= report["epsilonLowerBound"] <= report["epsilon"]
    assert report["auditVerdict"] == "passed"
    # learning: the DP adapter beats the pretrained base model on public held-out notes
    loss = report["evalLoss"]
    assert loss["dp"] < loss["base"] and loss["nodp"] < loss["base"]
    job = yaml.safe_load((out / "finetunejob.yaml").read_text())
    assert job["kind"] == "FineTuneJob" and job["spec"]["privacy"]["enabled"] is True
    nodp = yaml.safe_load((out / "finetunejob-nodp.yaml").read_text())
    assert nodp["spec"]["privacy"]["enabled"] is False
    assert {k: v for k, v in nodp["spec"].items() if k not in ("privacy", "output")} == {
        k: v for k, v in job["spec"].items() if k not in ("privacy", "output")
    }
    # the demo's plaintext never hit the disk: only the encrypted dataset is there
    assert [p.name for p in (out / "volumes" / "clinical-data").iterdir()] == [
        "notes.alpaca.jsonl.enc"
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # review F: `sealtune train` accepted what the API server rejects
        (lambda s: s.__setitem__("resourcse", {"gpus": 1}), r"spec\.resourcse"),
        (
            lambda s: s.setdefault("checkpoints", {}).__setitem__("size", "20GB"),
            r"spec\.checkpoints\.size",
        ),
        (
            lambda s: s.setdefault("resources", {}).__setitem__("memory", "lots"),
            r"spec\.resources\.memory",
        ),
        (
            lambda s: s["dataset"]["keySecret"].__setitem__("name", "Bad_Name"),
            r"spec\.dataset\.keySecret\.name",
        ),
        (
            lambda s: s["model"].__setitem__("image", {"reference": "r@sha256:" + "a" * 64}),
            r"exactly one",
        ),
    ],
)
def test_train_validates_what_the_api_server_validates(
    tmp_path: Path, mutate: object, expected: str
) -> None:
    doc = copy.deepcopy(load_job_yaml(REPO / "examples" / "finetunejob.yaml"))
    mutate(doc["spec"])  # type: ignore[operator]
    with pytest.raises(JobSpecError, match=expected):
        trainer_config_from_job(doc, tmp_path, tmp_path)


def test_operator_render_and_local_train_share_one_mapping(tmp_path: Path) -> None:
    """The pod's config and the laptop's config differ only in where volumes are."""
    from sealtune_api.finetunejob import FineTuneJob
    from sealtune_api.trainer_config import TrainerConfig

    doc = load_job_yaml(REPO / "examples" / "finetunejob.yaml")
    local = trainer_config_from_job(doc, tmp_path / "v", tmp_path / "s")
    job = FineTuneJob.model_validate({"metadata": doc["metadata"], "spec": doc["spec"]})
    from sealtune_operator.finetunejob.render import trainer_config
    from sealtune_operator.settings import OperatorSettings

    pod = trainer_config({"metadata": doc["metadata"]}, job.spec, OperatorSettings())
    assert isinstance(pod, TrainerConfig)
    for section in ("training", "privacy", "pii", "audit"):
        assert getattr(local, section) == getattr(pod, section)
    assert local.dataset.format == pod.dataset.format
    assert pod.dataset.path.endswith(job.spec.dataset.pvc.path)
    assert local.dataset.path.endswith(job.spec.dataset.pvc.path)
