"""The operator as a process: crash safety under SIGKILL, peering between replicas, metrics."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from tests.integration.conftest import (
    Namespace,
    OperatorProcess,
    ftj_manifest,
    instead_of,
    wait_for,
)

from sealtune_api.summary import TrainerSummary

pytestmark = pytest.mark.integration


def _prerequisites(ns: Namespace) -> None:
    for claim in ("base-models", "clinical-data", "adapters"):
        ns.bound_pvc(claim)
    ns.key_secret("clinical-data-key")
    ns.key_secret("adapter-output-key")


def _managed(ns: Namespace, kind: str) -> list[dict[str, Any]]:
    items = ns.get(kind, "-l", "app.kubernetes.io/managed-by=sealtune-operator")["items"]
    return list(items)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sigkill_at_random_moments_leaves_exactly_one_of_each_child(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    _prerequisites(ns)
    names = [f"crash-{i:02d}" for i in range(20)]
    rng = random.Random(20261122)

    def create_all() -> None:
        for name in names:
            ns.apply(ftj_manifest(name, podAnnotations={"sealtune.test/outcome": "Running"}))
            time.sleep(rng.uniform(0.0, 0.15))

    with instead_of(operator, ("crashy",)) as (crashy,):
        creator = threading.Thread(target=create_all)
        creator.start()
        kills = 0
        while creator.is_alive() or kills < 4:
            time.sleep(rng.uniform(0.2, 1.2))
            crashy.kill()
            kills += 1
            crashy.start(wait=False)
        creator.join()
        wait_for(crashy.healthy, what="restarted operator")
        for name in names:
            wait_for(
                functools.partial(ns.get_or_none, "job", f"{name}-trainer"),
                timeout=120,
                what=f"Job of {name}",
            )
    uids = {f["metadata"]["uid"] for f in ns.get("finetunejobs")["items"]}
    for kind in (
        "jobs",
        "networkpolicies",
        "secrets",
        "persistentvolumeclaims",
        "configmaps",
        "serviceaccounts",
    ):
        objs = _managed(ns, kind)
        per_job = Counter(o["metadata"]["labels"]["sealtune.io/finetunejob"] for o in objs)
        assert per_job == Counter({n: 1 for n in names}), (kind, per_job)
        for obj in objs:  # no orphans: every child's owner exists
            assert obj["metadata"]["ownerReferences"][0]["uid"] in uids, (kind, obj["metadata"])
    for name in names:
        wait_for(
            functools.partial(_job_name, ns, name),
            what=f"status of {name}",
        )


def test_two_replicas_peer_and_only_one_acts(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    _prerequisites(ns)
    replicas = (("replica-low", "--priority", "100"), ("replica-high", "--priority", "200"))
    with instead_of(operator, *replicas) as (low, high):
        time.sleep(3)  # let them see each other through the ClusterKopfPeering
        # `low` started alone and may have resumed older jobs; count from here on.
        low_before = _metric(low.metrics(), "sealtune_reconciles_total")
        for i in range(3):
            ns.apply(ftj_manifest(f"peer-{i}"))
        for i in range(3):
            wait_for(
                functools.partial(ns.get_or_none, "job", f"peer-{i}-trainer"), what=f"peer {i}"
            )
        time.sleep(2)
        acted_high = _metric(high.metrics(), "sealtune_reconciles_total")
        acted_low = _metric(low.metrics(), "sealtune_reconciles_total") - low_before
        assert acted_high >= 3
        assert acted_low == 0, "the lower-priority replica must stay paused"
        assert "Pausing operations in favour of" in low.log_path.read_text()
        jobs = Counter(
            j["metadata"]["labels"]["sealtune.io/finetunejob"] for j in _managed(ns, "jobs")
        )
        assert jobs == Counter({f"peer-{i}": 1 for i in range(3)})


def _job_name(ns: Namespace, name: str) -> Any:
    return (ns.get("finetunejob", name).get("status") or {}).get("jobName")


def test_operator_metrics_and_liveness(namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    _prerequisites(ns)
    ns.pv_for("metered-checkpoints")
    done = TrainerSummary(job="metered", phase="Succeeded", steps=1, total_steps=1)
    annotations = {"sealtune.test/outcome": "Succeeded", "sealtune.test/message": done.to_message()}
    ns.apply(ftj_manifest("metered", podAnnotations=annotations))
    wait_for(
        lambda: (ns.get("finetunejob", "metered").get("status") or {}).get("phase") == "Succeeded",
        timeout=90,
        what="Succeeded",
    )
    text = operator.metrics()
    assert _metric(text, "sealtune_reconciles_total", kind="FineTuneJob", result="created") >= 1
    assert _metric(text, "sealtune_jobs", phase="Succeeded") >= 1
    assert _metric(text, "sealtune_reconcile_duration_seconds_count", kind="FineTuneJob") >= 1
    assert "sealtune_reconcile_errors_total" in text
    assert operator.healthy()
