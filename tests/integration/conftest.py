"""Fixtures for tests against a real local control plane and a real operator process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

import sealtune_api.summary as sm
from sealtune_devkit.cluster import REPO, LocalCluster, free_port

OPERATOR_NS = "sealtune-system"
OPERATOR_SA = "sealtune-operator"
STORAGE_CLASS = "encrypted"


def wait_for(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.3, what: str = "condition"
) -> Any:
    """Poll until `check()` is truthy; its last value or exception goes into the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def helm() -> str:
    return (
        subprocess.run(
            ["bash", str(REPO / "hack" / "get-helm.sh")],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )


def chart_rbac(namespace: str) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC exactly as the Helm chart ships them."""
    out = subprocess.run(
        [
            helm(),
            "template",
            "sealtune",
            str(REPO / "charts" / "sealtune"),
            "--namespace",
            namespace,
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def storage_classes() -> list[dict[str, Any]]:
    """`encrypted` (in the operator's allowlist) and `plain` (not), without a provisioner."""
    return [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
        }
        for name in (STORAGE_CLASS, "plain")
    ]


def install_crds(cluster: LocalCluster, directory: Path, *established: str) -> None:
    """Apply every CRD in `directory` and wait until the named ones are served."""
    for crd in sorted(directory.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    names = [f"crd/{name}" for name in established]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


_CLUSTER: LocalCluster | None = None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    global _CLUSTER
    workdir = tmp_path_factory.mktemp("cluster")
    c = LocalCluster.boot(workdir)
    _CLUSTER = c
    try:
        crds = (
            "finetunejobs.sealtune.io",
            "modelserves.sealtune.io",
            "privacybudgets.sealtune.io",
            "clusterkopfpeerings.kopf.dev",
        )
        install_crds(c, REPO / "crds", *crds)
        c.apply(
            [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
                *storage_classes(),
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": "sealtune"},
                },
            ]
        )
        c.apply(chart_rbac(OPERATOR_NS))
        yield c
    finally:
        _CLUSTER = None
        c.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _CLUSTER is not None:
        report.sections.append(("control plane", _CLUSTER.describe_logs()))
    return report


def operator_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (real RBAC applies)."""
    token = cluster.kubectl(
        "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=24h"
    ).stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.workdir / "pki" / "ca.crt"),
                },
            }
        ],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": OPERATOR_SA}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


class OperatorProcess:
    """A real `sealtune-operator` process under the chart's ServiceAccount."""

    def __init__(self, cluster: LocalCluster, name: str, *extra: str) -> None:
        self.cluster = cluster
        self.name = name
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.kubeconfig = operator_kubeconfig(cluster, cluster.workdir / f"{name}.kubeconfig")
        self.log_path = cluster.logs / f"{name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> OperatorProcess:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "SEALTUNE_OPERATOR_NAMESPACE": OPERATOR_NS,
            "SEALTUNE_ENCRYPTING_STORAGE_CLASSES": STORAGE_CLASS,
            "SEALTUNE_TRAINER_IMAGE": "registry.local/sealtune/trainer@sha256:" + "a" * 64,
            "POD_NAME": self.name,
            # Short, so a pod that never starts is reported stuck within the tests.
            "SEALTUNE_POD_START_TIMEOUT_SECONDS": "10",
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sealtune_operator.main",
                "--all-namespaces",
                "--metrics-port",
                str(self.metrics_port),
                "--health-port",
                str(self.health_port),
                *self.extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for(self.healthy, timeout=60, what=f"{self.name} liveness")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (
            f"{self.name} exited; see {self.log_path}"
        )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, "operator").start()
    yield op
    op.stop()


@contextmanager
def instead_of(
    operator: OperatorProcess, *names: tuple[str, ...]
) -> Iterator[list[OperatorProcess]]:
    """Other operator processes (name, extra args...) in place of the session's one."""
    operator.stop()
    started: list[OperatorProcess] = []
    try:
        for name, *extra in names:
            started.append(OperatorProcess(operator.cluster, name, *extra).start())
        yield started
    finally:
        for proc in started:
            proc.stop()
        operator.start()


class Namespace:
    """A fresh namespace enforcing Pod Security `restricted`, with helpers to fill it."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.name, *args, **kw)

    def apply(self, manifest: Any, **kw: Any) -> str:
        return (
            self.cluster.apply(manifest, **kw)
            if isinstance(manifest, str)
            else self.cluster.apply(_in_ns(manifest, self.name), **kw)
        )

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def get_or_none(self, kind: str, name: str) -> Any:
        proc = self.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def bound_pvc(self, name: str, size: str = "100Gi", storage_class: str = STORAGE_CLASS) -> None:
        """A PVC with a PV pre-bound to it, so pods using it can be scheduled."""
        self.pv_for(name, size, storage_class)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": size}},
                },
            }
        )

    def pv_for(self, claim: str, size: str = "100Gi", storage_class: str = STORAGE_CLASS) -> None:
        """A PV reserved for a claim the operator will create (e.g. `<job>-checkpoints`)."""
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pv-{self.name}-{claim}"[:253]},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "hostPath": {"path": f"/tmp/sealtune-pv/{self.name}/{claim}"},
                    "claimRef": {"namespace": self.name, "name": claim},
                },
            }
        )

    def key_secret(self, name: str) -> None:
        self.kubectl(
            "create", "secret", "generic", name, f"--from-literal=key={os.urandom(32).hex()[:32]}"
        )

    def prerequisites_for_example(self, job: str = "clinical-notes-lora") -> None:
        for claim in ("base-models", "clinical-data", "adapters"):
            self.bound_pvc(claim)
        self.pv_for(f"{job}-checkpoints")
        self.key_secret("clinical-data-key")
        self.key_secret("adapter-output-key")


def _in_ns(manifest: Any, ns: str) -> Any:
    if isinstance(manifest, list):
        return [_in_ns(m, ns) for m in manifest]
    out = dict(manifest)
    out["metadata"] = {**manifest.get("metadata", {}), "namespace": ns}
    return out


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[Namespace]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield Namespace(cluster, name)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def ftj_manifest(name: str, **overrides: Any) -> dict[str, Any]:
    """The example FineTuneJob, renamed, with spec overrides (deep-merged)."""
    doc = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    doc["metadata"] = {"name": name}
    _merge(doc["spec"], overrides)
    return dict(doc)


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def status_of(ns: Namespace, kind: str, name: str) -> dict[str, Any]:
    return dict(ns.get(kind, name).get("status") or {})


def condition(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), {})


def events_of(ns: Namespace, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    return list(ns.get("events", "--field-selector", selector)["items"])


@contextmanager
def network_policies_refused(cluster: LocalCluster, ns: Namespace) -> Iterator[None]:
    """An admission policy refuses every NetworkPolicy created in `ns` until the block ends."""
    policy = f"deny-netpol-{ns.name}"
    rule = {
        "apiGroups": ["networking.k8s.io"],
        "apiVersions": ["v1"],
        "operations": ["CREATE"],
        "resources": ["networkpolicies"],
    }
    cluster.apply(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": policy},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {"resourceRules": [rule]},
                    "validations": [{"expression": "false", "message": "network policies frozen"}],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": policy},
                "spec": {
                    "policyName": policy,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": ns.name}
                        }
                    },
                },
            },
        ]
    )
    probe = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "probe", "namespace": ns.name},
        "spec": {"podSelector": {}},
    }

    def frozen() -> bool:
        # The policy is loaded asynchronously: probe it before the operator meets it.
        proc = ns.kubectl("create", "-f", "-", input=json.dumps(probe), check=False)
        if proc.returncode == 0:
            ns.kubectl("delete", "networkpolicy", "probe")
        return "frozen" in proc.stderr

    try:
        wait_for(frozen, what="admission policy active")
        yield
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding", policy, check=False)
        cluster.kubectl("delete", "validatingadmissionpolicy", policy, check=False)


# ----------------------------------------------------------------- trainer summaries

# What the KWOK stand-in for the trainer writes as its termination message, built from the
# contract's own models so no test can drift from what the real trainer writes.
LEDGER = [
    sm.LedgerEntry(
        statistic="adapter", mechanism="DP-SGD (Poisson-subsampled Gaussian)", epsilon=7.91
    ),
    sm.LedgerEntry(statistic="steps, totalSteps, epochs, seconds", mechanism="public"),
    sm.LedgerEntry(statistic="audit (canaries only)", mechanism="post-processing"),
]
PASSED = sm.SummaryAudit(
    verdict="passed",
    canaries=10,
    canary_repetitions=4,
    canary_exposure=1.7,
    canary_exposure_max=3.1,
    epsilon_lower_bound=0.42,
)
FAILED = PASSED.model_copy(
    update={
        "verdict": "failed",
        "canary_exposure": 9.6,
        "canary_exposure_max": 10.0,
        "epsilon_lower_bound": 9.2,
        "reasons": ["mean canary exposure 9.6 bits > 8.0", "epsilon lower bound 9.2 > 7.91"],
    }
)
# Relative to the output PVC (spec.output.pvc.path, then the file), as the trainer reports it.
ADAPTER_PATH = "clinical-notes-lora/adapter.tar.enc"


def trainer_summary(
    job: str, audit: sm.SummaryAudit = PASSED, sha: str = "d" * 64
) -> sm.TrainerSummary:
    """A trainer's summary of a finished run."""
    return sm.TrainerSummary(
        job=job,
        phase="Succeeded",
        privacy=sm.SummaryPrivacy(
            dp_enabled=True,
            epsilon=7.91,
            target_epsilon=8.0,
            delta=1e-5,
            noise_multiplier=0.83,
            sample_rate=0.016,
            max_grad_norm=0.1,
            accountant="prv",
            group_epsilon={"2": 17.9, "5": 52.3},
            ledger=LEDGER,
        ),
        steps=120,
        total_steps=120,
        epochs=2,
        records=sm.SummaryRecords(train=4000, held_out=1000),
        audit=audit,
        adapter=sm.SummaryAdapter(path=ADAPTER_PATH, sha256=sha),
        seconds=812.5,
    )
