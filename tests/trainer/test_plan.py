"""`sealtune plan`: the CLI as a user runs it, its numbers against the trainer's own
arithmetic (`training.make_plan`, `dp.solve_noise_multiplier`, the accountant), its
warnings, its one-line errors, and the example in docs/privacy-planning.md.

Every CLI run is started at once in a module fixture (each solves a noise multiplier,
seconds of CPU apiece), then the tests read the results.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.trainer.trainerkit import REPO, trainer_env

from sealtune_api.finetunejob import FineTuneJob
from sealtune_trainer import dp
from sealtune_trainer.plan import DELTA_FACTOR, NOISE_TO_SIGNAL_WARN, group_epsilon
from sealtune_trainer.train_cli import load_job_yaml

EXAMPLE = REPO / "examples" / "finetunejob.yaml"
DOC = REPO / "docs" / "privacy-planning.md"
N = 1000  # the documented example's --records
# Lines of the documented output that depend only on the spec and N (not on the solver).
STABLE_LABELS = (
    "Privacy plan for",
    "N (",
    "B (",
    "q = B/N",
    "steps per epoch",
    "epochs",
    "T = ",
    "C (",
    "delta ",
    "accountant",
    "target epsilon",
)


def _doc_example() -> tuple[list[str], list[str]]:
    """The `$ sealtune plan ...` command in the doc and the output lines shown below it."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"```console\n\$ (sealtune plan [^\n]+)\n(.*?)```", text, re.S)
    assert m, "docs/privacy-planning.md must show a `$ sealtune plan ...` console block"
    return shlex.split(m.group(1))[1:], m.group(2).rstrip("\n").splitlines()


def _variant(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sealtune_trainer.cli", *args],
        cwd=REPO,
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str, str]]]:
    """name -> (exit code, stdout, stderr) of every CLI invocation, run concurrently."""
    tmp = tmp_path_factory.mktemp("plan")
    base = load_job_yaml(EXAMPLE)
    jobs = {
        "eps50": _variant(base, ("spec", "privacy", "targetEpsilon"), 50),
        "delta": _variant(base, ("spec", "privacy", "delta"), 1e-3),
        "noisy": _variant(
            _variant(base, ("spec", "training", "batchSize"), 4),
            ("spec", "privacy", "targetEpsilon"),
            1,
        ),
        "unknown": _variant(base, ("spec", "training", "learningRat"), 0.1),
        "user": _variant(
            base,
            ("spec", "privacy"),
            {**base["spec"]["privacy"], "unit": "user", "userField": "patient_id"},
        ),
    }
    files = {}
    for name, doc in jobs.items():
        files[name] = tmp / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(doc), encoding="utf-8")
    doc_args, _ = _doc_example()
    commands = {
        "doc": doc_args,
        "json": ["plan", "-f", str(EXAMPLE), "--records", str(N), "--output", "json"],
        "missing": ["plan", "-f", str(EXAMPLE)],
        "eps50": ["plan", "-f", str(files["eps50"]), "--records", "200", "-o", "json"],
        "delta": ["plan", "-f", str(files["delta"]), "--records", "1000"],
        "noisy": ["plan", "-f", str(files["noisy"]), "--records", "40", "-o", "json"],
        "unknown": ["plan", "-f", str(files["unknown"]), "--records", "100"],
        "user-no-users": ["plan", "-f", str(files["user"]), "--records", "2000"],
        "user": [
            "plan",
            "-f",
            str(files["user"]),
            "--records",
            "2000",
            "--users",
            "640",
            "-o",
            "json",
        ],
        "no-file": ["plan", "-f", str(tmp / "absent.yaml"), "--records", "10"],
    }
    procs = {name: _cli(*args) for name, args in commands.items()}
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            results[name] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    yield results


def _ok_json(runs: dict[str, tuple[int, str, str]], name: str) -> dict[str, Any]:
    code, out, err = runs[name]
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def _one_line_error(runs: dict[str, tuple[int, str, str]], name: str) -> str:
    code, out, err = runs[name]
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("sealtune")]
    assert len(lines) == 1, err
    return lines[0]


def test_plan_is_a_sealtune_subcommand() -> None:
    from sealtune_trainer.cli import build_parser

    help_text = build_parser().format_help()
    assert re.search(r"^\s+plan\s", help_text, re.M), help_text


def test_json_agrees_with_the_trainers_plan(runs: dict[str, tuple[int, str, str]]) -> None:
    from sealtune_trainer.training import make_plan

    got = _ok_json(runs, "json")
    spec = FineTuneJob.model_validate(
        {"metadata": {"name": "x"}, "spec": load_job_yaml(EXAMPLE)["spec"]}
    ).spec
    tp = make_plan(N, spec.training, spec.privacy)
    batch = spec.training.batch_size
    assert got["records"] == got["units"] == N
    assert got["batchSize"] == tp.logical_batch == batch
    assert got["sampleRate"] == tp.sample_rate == batch / N
    assert got["stepsPerEpoch"] == tp.steps_per_epoch == max(1, round(N / batch))
    assert got["steps"] == tp.total_steps == tp.steps_per_epoch * spec.training.epochs
    sigma = tp.noise_multiplier
    assert sigma is not None and got["noiseMultiplier"] == sigma
    if getattr(tp, "loss_noise_multiplier", None) is None:
        assert sigma == dp.solve_noise_multiplier(spec.privacy, tp.sample_rate, tp.total_steps)
        assert got["lossRelease"] is None
    else:
        assert got["lossRelease"]["noiseMultiplier"] == tp.loss_noise_multiplier
    c = spec.privacy.max_grad_norm
    assert got["noiseStdMeanGradient"] == pytest.approx(sigma * c / batch)
    assert got["noiseToSignal"] == pytest.approx(sigma / batch)
    eps = got["epsilonAddRemove"]
    target = spec.privacy.target_epsilon
    assert got["targetEpsilon"] == target and 0.97 * target <= eps <= target
    assert got["adjacency"] == "add-remove"
    # Replace-one is the same accountant at half the noise (sensitivity 2C): larger.
    assert got["epsilonReplaceOne"] > eps
    assert "sigma/2" in got["replaceOneMethod"]
    if got["lossRelease"] is None:
        acc = dp.make_accountant(spec.privacy.accountant)
        acc.history = [(sigma / 2, tp.sample_rate, tp.total_steps)]
        assert got["epsilonReplaceOne"] == pytest.approx(dp.epsilon_of(acc, spec.privacy.delta))
    groups = {g["k"]: g for g in got["groupEpsilon"]}
    assert sorted(groups) == [2, 5, 10]
    for k, g in groups.items():
        assert g["epsilon"] == pytest.approx(k * eps)
        exact = k * math.exp((k - 1) * eps) * spec.privacy.delta
        assert g["delta"] == pytest.approx(min(1.0, exact))
        assert g["vacuous"] == (exact >= 1)
    assert got["warnings"] == []


def test_documented_example_matches_the_cli(runs: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = runs["doc"]
    assert code == 0, err
    _, shown = _doc_example()
    assert shown, "the doc shows no output"
    actual = out.splitlines()
    labels = {ln.strip().split("  ")[0] for ln in actual}
    for line in shown:
        if line.lstrip().startswith(STABLE_LABELS):
            assert line in actual, f"doc line not in the output: {line!r}\n{out}"
        elif line.startswith("  "):
            assert line.strip().split("  ")[0] in labels, f"doc label not in output: {line!r}"
    assert f"  q = B/N (Poisson sampling rate)           {64 / N:g}" in actual
    assert "epsilon, replace-one (upper bound)" in out and "sigma/2" in out
    assert not [ln for ln in actual if ln.startswith("warning:")]


def test_missing_records_is_a_usage_error(runs: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = runs["missing"]
    assert code == 2 and out == "" and "Traceback" not in err
    assert "--records" in err


def test_unknown_spec_field_is_named(runs: dict[str, tuple[int, str, str]]) -> None:
    line = _one_line_error(runs, "unknown")
    assert "spec.training.learningRat" in line


def test_missing_file_is_one_line(runs: dict[str, tuple[int, str, str]]) -> None:
    assert "absent.yaml" in _one_line_error(runs, "no-file")


def test_epsilon_50_warns(runs: dict[str, tuple[int, str, str]]) -> None:
    got = _ok_json(runs, "eps50")
    assert got["targetEpsilon"] == 50 and got["epsilonAddRemove"] <= 50
    assert any("targetEpsilon 50 > 10" in w for w in got["warnings"]), got["warnings"]


def test_large_delta_warns(runs: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = runs["delta"]
    assert code == 0, err
    assert 1 / (DELTA_FACTOR * 1000) < 1e-3
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert any("delta 0.001 > 1/(10N)" in w for w in warnings), out
    assert not any("targetEpsilon" in w for w in warnings)


def test_small_batch_warns_about_noise(runs: dict[str, tuple[int, str, str]]) -> None:
    got = _ok_json(runs, "noisy")
    assert got["batchSize"] == 4 and got["noiseToSignal"] > NOISE_TO_SIGNAL_WARN
    assert got["noiseToSignal"] == pytest.approx(got["noiseMultiplier"] / 4)
    assert any("noise-to-signal" in w for w in got["warnings"]), got["warnings"]


def test_user_unit_counts_users(runs: dict[str, tuple[int, str, str]]) -> None:
    line = _one_line_error(runs, "user-no-users")
    assert "spec.privacy.unit" in line and "--users" in line
    got = _ok_json(runs, "user")
    assert got["unit"] == "user" and got["records"] == 2000 and got["units"] == 640
    assert got["sampleRate"] == 64 / 640 and got["stepsPerEpoch"] == 10
    assert got["epsilonAddRemove"] <= got["targetEpsilon"]


def test_group_epsilon_formula() -> None:
    groups = group_epsilon(1.0, 1e-6)
    assert [g.k for g in groups] == [2, 5, 10]
    assert groups[0].epsilon == 2.0 and groups[0].delta == pytest.approx(2 * math.e * 1e-6)
    assert groups[2].delta == pytest.approx(10 * math.exp(9) * 1e-6) and not groups[2].vacuous
    huge = group_epsilon(200.0, 1e-5)  # no overflow; delta capped at 1
    assert all(g.delta == 1.0 and g.vacuous for g in huge)
