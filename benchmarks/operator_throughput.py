#!/usr/bin/env python3
"""Operator throughput on the real local control plane (etcd + kube-apiserver only).

Measures, in one run:
  * the API server alone accepting N FineTuneJobs (no operator running), as jobs/s;
  * with the operator running: time until every one of N new jobs has all its children
    and phase Pending, as jobs/s, and the ratio to the API-server-only figure;
  * API write requests per job (apiserver_request_total, POST/PUT/PATCH/DELETE, minus the
    benchmark's own creates and the API server's own lease and endpoints upkeep);
  * the operator's peak RSS;
  * API requests by verb during 60 idle seconds with N jobs present.
Targets (issue 9): >= 20 jobs/s, <= 9 writes per job (6 creates, 1 status patch, 2 Events),
no periodic list/get when idle.

Usage: python benchmarks/operator_throughput.py [--jobs 200] [--idle 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sealtune_devkit.cluster import LocalCluster, free_port  # noqa: E402

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}
# What the API server writes for itself (its identity lease, the `kubernetes` endpoints).
APISERVER_UPKEEP = {"leases", "endpoints"}
_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def request_counts(cluster: LocalCluster) -> Counter[tuple[str, str, str]]:
    """(verb, resource, subresource) -> requests so far."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in cluster.metrics().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        counts[(labels["verb"], labels["resource"], labels.get("subresource", ""))] += int(
            float(m["value"])
        )
    return counts


def ftj(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    doc["metadata"] = {"name": name}
    return dict(doc)


def create_jobs(cluster: LocalCluster, namespace: str, n: int, workers: int = 16) -> float:
    """Create n FineTuneJobs with a concurrent client; returns seconds taken."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
    client.configuration.connection_pool_maxsize = workers
    api = kubernetes.client.CustomObjectsApi(client)

    def one(i: int) -> None:
        api.create_namespaced_custom_object(
            "sealtune.io", "v1alpha1", namespace, "finetunejobs", ftj(f"job-{i:04d}")
        )

    start = time.monotonic()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - start


def wait_all_pending(cluster: LocalCluster, namespace: str, n: int, timeout: float = 300) -> float:
    """Watch FineTuneJobs until n have phase Pending and a Job; returns the monotonic time."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(str(cluster.kubeconfig))
    api = kubernetes.client.CustomObjectsApi(client)
    done: set[str] = set()
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        api.list_namespaced_custom_object,
        "sealtune.io",
        "v1alpha1",
        namespace,
        "finetunejobs",
        timeout_seconds=int(timeout),
    ):
        obj = event["object"]
        status = obj.get("status") or {}
        if status.get("phase") == "Pending" and status.get("jobName"):
            done.add(obj["metadata"]["name"])
        if len(done) >= n:
            watch.stop()
            return time.monotonic()
    raise TimeoutError(f"only {len(done)} of {n} jobs reached Pending")


def namespace(cluster: LocalCluster, name: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for claim in ("base-models", "clinical-data", "adapters"):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "encrypted",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--idle", type=int, default=60)
    args = parser.parse_args()
    n = args.jobs

    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster.start(Path(tmp), kwok=False, controllers=False) as cluster,
    ):
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.sealtune.io")
        cluster.apply(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "sealtune"},
            }
        )

        print("control plane up; creating jobs without an operator", file=sys.stderr)
        # 1. The API server alone.
        namespace(cluster, "bench-api")
        api_seconds = create_jobs(cluster, "bench-api", n)
        cluster.kubectl("delete", "namespace", "bench-api", "--wait=false")

        # 2. The operator.
        namespace(cluster, "bench-op")
        cluster.apply(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": "sealtune", "namespace": "bench-op"},
            }
        )
        log = open(Path(tempfile.gettempdir()) / "sealtune-bench-operator.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "SEALTUNE_ENCRYPTING_STORAGE_CLASSES": "encrypted",
        }
        op = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sealtune_operator.main",
                "-n",
                "bench-op",
                "--metrics-port",
                str(free_port()),
                "--health-port",
                str(free_port()),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(5)  # watches established
            before = request_counts(cluster)
            cpu_before = cpu_seconds(op.pid)
            with cf.ThreadPoolExecutor(1) as waiter:
                finished = waiter.submit(wait_all_pending, cluster, "bench-op", n)
                time.sleep(1)  # the watch is open
                start = time.monotonic()
                create_jobs(cluster, "bench-op", n)
                print(f"created {n} jobs; waiting for the operator", file=sys.stderr)
                op_seconds = finished.result() - start
            jobs = len(cluster.get_json("jobs", "-n", "bench-op")["items"])
            assert jobs == n, f"{jobs} Jobs for {n} FineTuneJobs"
            op_cpu = cpu_seconds(op.pid) - cpu_before
            time.sleep(3)  # let trailing Events land before counting
            after = request_counts(cluster)
            writes = sum(
                v
                for (verb, r, _s), v in (after - before).items()
                if verb in WRITE_VERBS and r not in APISERVER_UPKEEP
            )
            by_resource = Counter(
                {
                    f"{verb} {r}{'/' + s if s else ''}": v
                    for (verb, r, s), v in (after - before).items()
                    if verb in WRITE_VERBS
                }
            )
            operator_writes = writes - n  # minus the benchmark's own creates

            print(f"all Pending after {time.monotonic() - start:.1f}s; idling", file=sys.stderr)
            idle_before = request_counts(cluster)
            time.sleep(args.idle)
            idle = request_counts(cluster) - idle_before
            rss = peak_rss_mib(op.pid)
        finally:
            op.terminate()
            op.wait(timeout=30)

    api_rate = n / api_seconds
    op_rate = n / op_seconds
    rows = [
        ("FineTuneJobs", f"{n}", ""),
        ("API server alone: accept", f"{api_rate:.1f} jobs/s", f"{api_seconds:.2f} s"),
        ("operator: all children + Pending", f"{op_rate:.1f} jobs/s", f"{op_seconds:.2f} s"),
        ("ratio operator / API server", f"{op_rate / api_rate:.2f}", "target: >= 20 jobs/s"),
        ("API writes per job (operator)", f"{operator_writes / n:.2f}", "target: <= 9"),
        ("operator CPU per job", f"{op_cpu / n * 1000:.1f} ms", f"{op_cpu:.2f} s in all"),
        ("operator peak RSS", f"{rss:.0f} MiB", ""),
        (
            f"API requests in {args.idle}s idle",
            f"{sum(idle.values())}",
            json.dumps({f"{v} {r}{'/' + s if s else ''}": c for (v, r, s), c in idle.items() if c}),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>18}  note")
    print("-" * (width + 40))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>18}  {note}")
    print("\nwrites by resource during the run (incl. the benchmark's creates):")
    for key, count in by_resource.most_common():
        print(f"  {key:<45} {count:>6}  ({count / n:.2f}/job)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
