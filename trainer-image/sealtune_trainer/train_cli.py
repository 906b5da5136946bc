"""`sealtune train --config finetunejob.yaml`: run a FineTuneJob on this machine.

The YAML is the very object you would `kubectl apply`. Volumes and Secrets are mapped
to local directories that mirror the pod's mounts, so a laptop run exercises the same
code path as the cluster:

  PVC `X`, path `p`      -> <--volumes-root, default ./.sealtune/volumes>/X/p
  Secret `S`, key `k`    -> <--secrets-root, default ./.sealtune/secrets>/S/k
  checkpoints            -> <--volumes-root>/<job>-checkpoints (the operator's PVC)
  checkpoint key         -> <--secrets-root>/<job>-checkpoint-key/key (created if absent,
                            like the operator's per-job Secret)

The whole object is validated by the same pydantic models the CRD is generated from
(unknown fields, quantities, names and paths included), so `sealtune train` refuses what
the API server refuses and errors name the offending field.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic loads only when a job is read: `sealtune --help` stays fast
    from sealtune_api.trainer_config import TrainerConfig

DEFAULT_VOLUMES = "./.sealtune/volumes"
DEFAULT_SECRETS = "./.sealtune/secrets"


class JobSpecError(ValueError):
    """The FineTuneJob YAML is not usable; the message names the field."""


def _problems(exc: Any) -> str:
    return "; ".join(
        ".".join(str(x) for x in e["loc"]) + f": {e['msg']}"
        for e in exc.errors(include_input=False)
    )


def trainer_config_from_job(
    doc: dict[str, Any], volumes_root: Path, secrets_root: Path, *, metrics_port: int = 0
) -> TrainerConfig:
    """Validate a FineTuneJob document as the API server would, then map it with
    `TrainerConfig.from_job`, its volumes and Secrets under the local roots."""
    from pydantic import ValidationError

    from sealtune_api.finetunejob import FineTuneJob
    from sealtune_api.trainer_config import Mounts, TrainerConfig

    if doc.get("kind") != "FineTuneJob":
        raise JobSpecError(f"kind must be FineTuneJob, not {doc.get('kind')!r}")
    if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
        raise JobSpecError("metadata.name is required")
    try:
        job = FineTuneJob.model_validate(
            {"metadata": doc["metadata"], "spec": doc.get("spec") or {}}
        )
    except ValidationError as exc:
        raise JobSpecError(_problems(exc)) from None
    spec = job.spec
    if spec.model.pvc is None:
        raise JobSpecError(
            "spec.model.image (OCI image volumes) runs only in a cluster; "
            "use spec.model.pvc locally"
        )
    name = str(job.metadata["name"])
    if not job.metadata.get("uid"):
        job.metadata["uid"] = f"local-{name}"
    ckpt_key = secrets_root / f"{name}-checkpoint-key" / "key"
    if not ckpt_key.exists():
        from .crypto import generate_key

        ckpt_key.parent.mkdir(parents=True, exist_ok=True)
        ckpt_key.write_bytes(generate_key())
        ckpt_key.chmod(0o400)
    mounts = Mounts(
        model=str(volumes_root / spec.model.pvc.claim_name),
        dataset=str(volumes_root / spec.dataset.pvc.claim_name),
        dataset_key_file=str(
            secrets_root / spec.dataset.key_secret.name / spec.dataset.key_secret.key
        ),
        output=str(volumes_root / spec.output.pvc.claim_name),
        output_key_file=str(
            secrets_root / spec.output.key_secret.name / spec.output.key_secret.key
        ),
        checkpoints=str(volumes_root / f"{name}-checkpoints"),
        checkpoint_key_file=str(ckpt_key),
        scratch=str(volumes_root / ".scratch"),
        termination_message_path=str(volumes_root / f"{name}-summary.json"),
        metrics_port=metrics_port,
    )
    return TrainerConfig.from_job(job, mounts)


def load_job_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise JobSpecError(f"{path}: {problem}{where}") from None
    except UnicodeDecodeError:
        raise JobSpecError(f"{path}: not UTF-8 text") from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        raise JobSpecError(f"{path}: expected exactly one FineTuneJob document, found {len(jobs)}")
    return jobs[0]


def run_train(args: argparse.Namespace) -> int:
    """Handler of `sealtune train`."""
    from sealtune_api.exitcodes import ExitCode

    from .logs import quiet_libraries

    quiet_libraries()
    try:
        doc = load_job_yaml(Path(args.config))
        cfg = trainer_config_from_job(
            doc, Path(args.volumes_root), Path(args.secrets_root), metrics_port=args.metrics_port
        )
    except (JobSpecError, OSError) as exc:
        print(f"sealtune train: {exc}", file=sys.stderr)
        return ExitCode.USAGE

    from tqdm import tqdm

    from .job import JobError, run_job
    from .summary import write_termination_message

    bar = tqdm(total=None, unit="step", disable=args.quiet, dynamic_ncols=True)

    def progress(step: int, total: int, eps: float | None) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = step
        if eps is not None:  # epsilon so far; never the raw loss (see docs/trainer.md)
            bar.set_postfix({"eps": f"{eps:.3f}"}, refresh=False)
        bar.refresh()

    try:
        result = run_job(
            cfg, device=args.device, progress=progress, stop_after_steps=args.stop_after_steps
        )
    except JobError as exc:
        bar.close()
        print(f"sealtune train: {exc.reason}: {exc}", file=sys.stderr)
        return exc.exit_code
    bar.close()
    text = write_termination_message(cfg.termination_message_path, result.summary)
    if args.summary_out:
        Path(args.summary_out).write_text(text, encoding="utf-8")
    print(json.dumps(json.loads(text), indent=2) if not args.quiet else text)
    audit = result.summary.audit
    if audit is not None and audit.verdict == "failed":
        print(f"sealtune train: audit failed: {'; '.join(audit.reasons)}", file=sys.stderr)
        return ExitCode.AUDIT
    return ExitCode.OK


def register(subparsers: Any) -> None:
    """Add `train` to the `sealtune` CLI."""
    p = subparsers.add_parser(
        "train",
        help="run a FineTuneJob YAML locally (same code path as the trainer pod)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="FineTuneJob YAML")
    p.add_argument("--volumes-root", default=DEFAULT_VOLUMES, help="where PVCs live locally")
    p.add_argument("--secrets-root", default=DEFAULT_SECRETS, help="where Secrets live locally")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics (0: off)")
    p.add_argument("--summary-out", default="", help="also write the summary JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar; compact summary")
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_train)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m sealtune_trainer.train_cli`) until the CLI dispatches."""
    ap = argparse.ArgumentParser(prog="sealtune")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
