"""`sealtune plan -f job.yaml --records N`: what a FineTuneJob will spend, before it runs.

The plan reads only the spec and the dataset size you declare (`--records`, and `--users`
with `privacy.unit: user`); it never opens the private data. It runs the trainer's own
step arithmetic and noise calibration (`training.make_plan`, `dp.solve_noise_multiplier`)
and its accountant, so the numbers are the ones the job will use for that N.

Printed: N, q = B/N, steps per epoch and T, the noise multiplier sigma solved for the
target, the noise on the averaged gradient (sigma*C/B) and the noise-to-signal ratio
sigma/B, the predicted epsilon under add/remove adjacency (what the job reports) and under
replace-one (an upper bound: the same accountant with sensitivity 2C, i.e. at sigma/2),
and group epsilon for k = 2, 5, 10 units. Warnings:

  delta > 1/(10 N)     a mechanism that publishes one random record is (0, 1/N)-DP
  targetEpsilon > 10   the guarantee says little about a single record or user
  sigma/B > 0.05       the noise on each coordinate of the averaged (clipped) gradient is
                       more than 1/20 of the clipping norm C: with that little averaging,
                       fine-tunes rarely learn; raise batchSize (or epochs at a fixed q)

See docs/privacy-planning.md for each number in one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic, torch and opacus load only when a plan is computed
    from sealtune_api.trainer_config import AuditConfig, PrivacyConfig, TrainingConfig

GROUP_SIZES = (2, 5, 10)
EPSILON_WARN = 10.0  # warn when the target epsilon exceeds this
DELTA_FACTOR = 10  # warn when delta > 1 / (DELTA_FACTOR * N)
NOISE_TO_SIGNAL_WARN = 0.05  # warn when sigma / B exceeds this
EXIT_USAGE = 2
REPLACE_ONE_METHOD = "upper bound: add/remove accountant at sigma/2 (sensitivity 2C)"


class PlanError(ValueError):
    """The job or the arguments cannot be planned; the message names the field."""


@dataclass(frozen=True)
class GroupEpsilon:
    """(k*eps, k*e^((k-1)eps)*delta)-DP for a group of k units; delta capped at 1."""

    k: int
    epsilon: float
    delta: float

    @property
    def vacuous(self) -> bool:
        return self.delta >= 1.0


@dataclass(frozen=True)
class LossRelease:
    """The DP-noised training loss the job releases (its cost is part of epsilon)."""

    interval: int
    releases: int
    noise_multiplier: float
    clip: float


@dataclass
class PrivacyPlan:
    """Everything `sealtune plan` prints; all of it is public (spec + declared N)."""

    job: str
    unit: str  # "record" | "user"
    records: int
    units: int  # N of the accountant: records, or users with unit user
    batch_size: int  # expected units per step, min(batchSize, N)
    sample_rate: float
    steps_per_epoch: int
    epochs: int
    steps: int
    dp_enabled: bool
    target_epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    max_grad_norm: float | None = None
    noise_multiplier: float | None = None
    noise_std_mean_gradient: float | None = None  # sigma*C/B
    noise_to_signal: float | None = None  # sigma/B
    loss_release: LossRelease | None = None
    epsilon_add_remove: float | None = None  # None: infinite (no DP)
    epsilon_replace_one: float | None = None
    group_epsilon: list[GroupEpsilon] = field(default_factory=list)
    held_out_fraction: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """camelCase keys, as in the job's status and summary."""
        raw = asdict(self)
        raw["group_epsilon"] = [{**asdict(g), "vacuous": g.vacuous} for g in self.group_epsilon]
        raw["adjacency"] = "add-remove"  # of epsilonAddRemove, the epsilon the job reports
        raw["replace_one_method"] = REPLACE_ONE_METHOD
        out: dict[str, Any] = _camel_keys(raw)
        return out


def _camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def group_epsilon(
    epsilon: float, delta: float, sizes: tuple[int, ...] = GROUP_SIZES
) -> list[GroupEpsilon]:
    """Group privacy for each size k (`dp.group_privacy`)."""
    from . import dp

    return [GroupEpsilon(k, *dp.group_privacy(epsilon, delta, k)) for k in sizes]


def _epsilon(kind: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """The trainer's accountant over `history` ([(sigma, q, steps), ...]), as Opacus keeps it."""
    from . import dp

    return dp.composed_epsilon(kind, history, delta)


def make_privacy_plan(
    units: int,
    training: TrainingConfig,
    privacy: PrivacyConfig,
    *,
    records: int | None = None,
    audit: AuditConfig | None = None,
    job: str = "",
) -> PrivacyPlan:
    """The plan for `units` privacy units (records, or users with `privacy.unit: user`)."""
    from .training import make_plan

    if units < 1:
        raise PlanError("the dataset size must be at least 1")
    tp = make_plan(units, training, privacy)
    plan = PrivacyPlan(
        job=job,
        unit=privacy.unit,
        records=records if records is not None else units,
        units=tp.n_train,
        batch_size=tp.logical_batch,
        sample_rate=tp.sample_rate,
        steps_per_epoch=tp.steps_per_epoch,
        epochs=training.epochs,
        steps=tp.total_steps,
        dp_enabled=tp.noise_multiplier is not None,
        held_out_fraction=audit.held_out_fraction if audit is not None else 0.0,
    )
    if tp.noise_multiplier is None:
        plan.warnings.append(
            "privacy.enabled is false: no differential privacy, epsilon is infinite"
        )
        return plan
    sigma, q, steps, b = tp.noise_multiplier, tp.sample_rate, tp.total_steps, tp.logical_batch
    plan.target_epsilon = privacy.target_epsilon
    plan.delta = privacy.delta
    plan.accountant = privacy.accountant
    plan.max_grad_norm = privacy.max_grad_norm
    plan.noise_multiplier = sigma
    plan.noise_std_mean_gradient = sigma * privacy.max_grad_norm / b
    plan.noise_to_signal = sigma / b
    history = [(sigma, q, steps)]
    loss_sigma = tp.loss_noise_multiplier
    if loss_sigma:
        from . import dp

        interval = tp.loss_release_interval or steps
        releases = dp.loss_releases(steps, interval)
        plan.loss_release = LossRelease(interval, releases, loss_sigma, tp.loss_clip)
        # the trainer's accounting: release steps at the joint noise multiplier
        history = dp.release_history(sigma, loss_sigma, q, steps, releases)
    plan.epsilon_add_remove = _epsilon(privacy.accountant, history, privacy.delta)
    # Replace-one: swapping a unit moves each clipped sum by at most 2C (2x the loss clip),
    # so the add/remove accountant at half the noise multipliers bounds it from above.
    halved = [(s / 2, r, n) for s, r, n in history]
    try:
        plan.epsilon_replace_one = _epsilon(privacy.accountant, halved, privacy.delta)
    except (ValueError, RuntimeError, OverflowError):
        plan.epsilon_replace_one = None  # beyond the accountant's range: very large
    plan.group_epsilon = group_epsilon(plan.epsilon_add_remove, privacy.delta)
    plan.warnings += _warnings(plan)
    return plan


def _warnings(plan: PrivacyPlan) -> list[str]:
    assert plan.delta is not None and plan.target_epsilon is not None
    assert plan.noise_to_signal is not None
    out: list[str] = []
    what = "users" if plan.unit == "user" else "records"
    limit = 1 / (DELTA_FACTOR * plan.units)
    if plan.delta > limit:
        out.append(
            f"delta {plan.delta:g} > 1/(10N) = {limit:.3g}: releasing one random unit outright "
            f"is (0, 1/N)-DP; choose privacy.delta well below 1/N (N = {plan.units} {what})"
        )
    if plan.target_epsilon > EPSILON_WARN:
        out.append(
            f"targetEpsilon {plan.target_epsilon:g} > {EPSILON_WARN:g}: the guarantee bounds an "
            f"attacker's odds on one unit by a factor e^epsilon, which says little at this size"
        )
    if plan.noise_to_signal > NOISE_TO_SIGNAL_WARN:
        out.append(
            f"noise-to-signal sigma/B = {plan.noise_to_signal:.3g} > {NOISE_TO_SIGNAL_WARN:g}: "
            f"the noise on the averaged gradient exceeds 1/20 of C per coordinate, learning is "
            f"unlikely; raise training.batchSize (more {what} per step)"
        )
    return out


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")
    return f"{x:.3e}"


def render_table(plan: PrivacyPlan) -> str:
    """The human-readable plan: one number per line, its meaning in the label."""
    unit = "users" if plan.unit == "user" else "records"
    rows: list[tuple[str, str]] = []
    if plan.unit == "user":
        rows.append(("records (declared, --records)", str(plan.records)))
    rows += [
        (f"N ({unit} trained on)", str(plan.units)),
        (f"B (expected {unit} per step, batchSize)", str(plan.batch_size)),
        ("q = B/N (Poisson sampling rate)", _num(plan.sample_rate, 6)),
        ("steps per epoch = round(1/q)", str(plan.steps_per_epoch)),
        ("epochs", str(plan.epochs)),
        ("T = steps per epoch x epochs", str(plan.steps)),
    ]
    if plan.dp_enabled:
        rows += [
            ("C (maxGradNorm, clipping norm)", _num(plan.max_grad_norm)),
            ("delta", f"{plan.delta:g}"),
            ("accountant", str(plan.accountant)),
            ("target epsilon", _num(plan.target_epsilon)),
            ("sigma (noise multiplier, solved)", _num(plan.noise_multiplier)),
            ("sigma*C/B (noise std, mean gradient)", _num(plan.noise_std_mean_gradient)),
            ("sigma/B (noise-to-signal)", _num(plan.noise_to_signal)),
        ]
        if plan.loss_release is not None:
            lr = plan.loss_release
            rows.append(
                (
                    "noised loss releases (every, sigma)",
                    f"{lr.releases} (every {lr.interval} steps, sigma {_num(lr.noise_multiplier)})",
                )
            )
        rows += [
            ("epsilon, add/remove (reported)", _num(plan.epsilon_add_remove)),
            (
                "epsilon, replace-one (upper bound)",
                _num(plan.epsilon_replace_one) + "  (sensitivity 2C: accountant at sigma/2)",
            ),
        ]
        for g in plan.group_epsilon:
            delta = "no guarantee (delta >= 1)" if g.vacuous else f"delta {g.delta:.3g}"
            rows.append((f"group epsilon, k={g.k} {unit}", f"{_num(g.epsilon)}  ({delta})"))
    else:
        rows.append(("epsilon", "inf (privacy.enabled: false)"))
    width = max(len(k) for k, _ in rows)
    title = f"Privacy plan for FineTuneJob {plan.job} (privacy unit: {plan.unit})"
    lines = [title, *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
    if plan.unit == "record" and plan.held_out_fraction > 0:
        lines.append(
            f"note: N is the number of records trained on; the job holds out "
            f"~{plan.held_out_fraction:.0%} of the dataset for the audit"
        )
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines) + "\n"


def plan_from_file(path: Path, records: int, users: int | None) -> PrivacyPlan:
    """Read and validate a FineTuneJob YAML like the API server, then plan it."""
    import yaml
    from pydantic import ValidationError

    from sealtune_api.finetunejob import FineTuneJob

    from .train_cli import JobSpecError, _problems, load_job_yaml

    try:
        doc = load_job_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise PlanError(f"{path}: not valid YAML{where}") from None
    except JobSpecError as exc:
        raise PlanError(str(exc)) from None
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise PlanError("metadata: must be a mapping")
    try:
        job = FineTuneJob.model_validate({"metadata": metadata, "spec": doc.get("spec") or {}})
    except ValidationError as exc:
        raise PlanError(_problems(exc)) from None
    spec = job.spec
    if records < 1:
        raise PlanError("--records must be at least 1")
    if spec.privacy.unit == "user":
        if users is None:
            raise PlanError(
                "spec.privacy.unit is user: pass --users U (the number of distinct "
                f"{spec.privacy.user_field} values), the accountant counts users"
            )
        if not 1 <= users <= records:
            raise PlanError("--users must be between 1 and --records")
        units = users
    else:
        units = records
    return make_privacy_plan(
        units,
        spec.training,
        spec.privacy,
        records=records,
        audit=spec.audit,
        job=str(metadata.get("name") or ""),
    )


def run_plan(args: argparse.Namespace) -> int:
    """Handler of `sealtune plan`."""
    try:
        plan = plan_from_file(Path(args.config), args.records, args.users)
    except PlanError as exc:
        print(f"sealtune plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"sealtune plan: {exc.strerror or type(exc).__name__}: {args.config}", file=sys.stderr
        )
        return EXIT_USAGE
    if args.output == "json":
        print(json.dumps(plan.to_json(), indent=2))
    else:
        sys.stdout.write(render_table(plan))
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: Any) -> None:
    """Add `plan` to the `sealtune` CLI."""
    p = subparsers.add_parser(
        "plan",
        help="predict q, T, sigma and epsilon of a FineTuneJob for a declared dataset size",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-f", "--config", required=True, help="FineTuneJob YAML")
    p.add_argument(
        "--records",
        type=_count,
        required=True,
        help="records the job trains on (declared: the plan never reads the data)",
    )
    p.add_argument(
        "--users", type=_count, default=None, help="distinct users (needed with privacy.unit user)"
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run_plan)
