"""A real local control plane for tests and benchmarks.

etcd + kube-apiserver (secure port, RBAC + Node authorization, Pod Security admission,
service-account signing keys), kube-controller-manager, kube-scheduler and KWOK with
fake GPU nodes. Binaries come from `hack/get-k8s-binaries.sh` (built from Go modules,
cached). Certificates are made here with `cryptography`.

    with LocalCluster.start(tmp_dir) as cluster:
        cluster.kubectl("get", "nodes")
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
STAGES = Path(__file__).with_name("kwok-stages.yaml")
GPU_NODES = ("gpu-node-1", "gpu-node-2")


def _detach_but_die_with_parent() -> None:
    """New session (Ctrl-C in a terminal does not hit the control plane mid-test), but a
    killed test run takes its components with it instead of leaving orphans."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binaries() -> Path:
    """Build or reuse the cached Kubernetes binaries; returns their directory."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "get-k8s-binaries.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject_cn: str,
    key: Any,
    issuer: tuple[x509.Certificate, Any] | None,
    *,
    org: str | None = None,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name_attrs = [x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]
    if org:
        name_attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    subject = x509.Name(name_attrs)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                ]
            ),
            critical=False,
        )
    if not ca:
        usages = [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256())


def _write_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("sealtune-test-ca", ca_key, None, ca=True)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    server_key = _key()
    server = _cert("kube-apiserver", server_key, (ca, ca_key), server=True)
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.key").write_bytes(_pem_key(server_key))
    for user, org in (
        ("admin", "system:masters"),
        ("system:kube-controller-manager", "system:masters"),
        ("system:kube-scheduler", "system:masters"),
        ("kwok", "system:masters"),
    ):
        key = _key()
        cert = _cert(user, key, (ca, ca_key), org=org)
        stem = user.replace("system:", "").replace(":", "-")
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(_pem_key(key))
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(_pem_key(sa))
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(cfg))


# --------------------------------------------------------------------------- the cluster


@dataclass
class LocalCluster:
    """A running control plane; `kubeconfig` is cluster-admin."""

    workdir: Path
    bin_dir: Path
    server: str
    kubeconfig: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        workdir: Path,
        *,
        kwok: bool = True,
        controllers: bool = True,
        bin_dir: Path | None = None,
    ) -> Iterator[LocalCluster]:
        cluster = cls.boot(workdir, kwok=kwok, controllers=controllers, bin_dir=bin_dir)
        try:
            yield cluster
        finally:
            cluster.stop()

    @classmethod
    def boot(
        cls,
        workdir: Path,
        *,
        kwok: bool = True,
        controllers: bool = True,
        bin_dir: Path | None = None,
    ) -> LocalCluster:
        bin_dir = bin_dir or binaries()
        workdir.mkdir(parents=True, exist_ok=True)
        pki = workdir / "pki"
        _write_pki(pki)
        port = free_port()
        server = f"https://127.0.0.1:{port}"
        admin = workdir / "admin.kubeconfig"
        _kubeconfig(admin, server, pki, "admin")
        cluster = cls(workdir=workdir, bin_dir=bin_dir, server=server, kubeconfig=admin)
        cluster.logs.mkdir(exist_ok=True)
        try:
            cluster._start_etcd_and_apiserver(pki, port)
            if controllers:
                cluster._start_controllers(pki)
            if kwok:
                cluster._start_kwok(pki)
                cluster.add_gpu_nodes()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.processes[name] = subprocess.Popen(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_detach_but_die_with_parent,
        )

    def _start_etcd_and_apiserver(self, pki: Path, port: int) -> None:
        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                "etcd",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(4 << 30),
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                "--etcd-servers",
                f"http://127.0.0.1:{etcd_port}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(port),
                "--cert-dir",
                str(self.workdir / "apiserver-certs"),
                "--tls-cert-file",
                str(pki / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki / "apiserver.key"),
                "--client-ca-file",
                str(pki / "ca.crt"),
                "--authorization-mode",
                "Node,RBAC",
                "--enable-admission-plugins",
                "NodeRestriction",
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--service-account-key-file",
                str(pki / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki / "sa.key"),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=false",
                "--feature-gates",
                "ImageVolume=true",
                "--max-requests-inflight",
                "800",
                "--max-mutating-requests-inflight",
                "400",
            ],
        )
        self.wait_ready()

    def _start_controllers(self, pki: Path) -> None:
        cm = self.workdir / "controller-manager.kubeconfig"
        _kubeconfig(cm, self.server, pki, "kube-controller-manager")
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                "--kubeconfig",
                str(cm),
                "--authentication-kubeconfig",
                str(cm),
                "--authorization-kubeconfig",
                str(cm),
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "0",
                "--service-account-private-key-file",
                str(pki / "sa.key"),
                "--root-ca-file",
                str(pki / "ca.crt"),
                "--use-service-account-credentials=false",
                "--controllers",
                "*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
                "--kube-api-qps",
                "200",
                "--kube-api-burst",
                "400",
                # KWOK heartbeats node status every 20-45 s; with the default grace period
                # the node lifecycle controller flaps nodes NotReady and pods un-Ready.
                "--node-monitor-grace-period",
                "1h",
                "--concurrent-job-syncs",
                "20",
                "--concurrent-gc-syncs",
                "40",
            ],
        )
        sched = self.workdir / "scheduler.kubeconfig"
        _kubeconfig(sched, self.server, pki, "kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                "--kubeconfig",
                str(sched),
                "--authentication-kubeconfig",
                str(sched),
                "--authorization-kubeconfig",
                str(sched),
                "--leader-elect=false",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                "0",
            ],
        )

    def _start_kwok(self, pki: Path) -> None:
        kw = self.workdir / "kwok.kubeconfig"
        _kubeconfig(kw, self.server, pki, "kwok")
        self._spawn(
            "kwok",
            [
                "kwok",
                "--kubeconfig",
                str(kw),
                "--config",
                str(STAGES),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
                "--node-ip=10.0.0.2",
                "--cidr=10.1.0.0/16",
                "--server-address",
                f"127.0.0.1:{free_port()}",
            ],
        )

    def stop(self) -> None:
        """SIGTERM everything (reverse start order), SIGKILL what lingers."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def describe_logs(self) -> str:
        names = ", ".join(p.name for p in sorted(self.logs.glob("*.log")))
        return f"control-plane logs: {self.logs} ({names})"

    # ------------------------------------------------------------------ access

    def _ssl(self) -> ssl.SSLContext:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def raw_get(self, path: str, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.server + path, context=self._ssl(), timeout=timeout) as r:
            return str(r.read().decode())

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {proc.returncode}; {self.describe_logs()}"
                    )
            try:
                if self.raw_get("/readyz", timeout=3).strip() == "ok":
                    return
            except Exception as exc:  # not up yet
                last = str(exc)
            time.sleep(0.5)
        raise TimeoutError(f"kube-apiserver not ready: {last}; {self.describe_logs()}")

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        as_user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        if as_user:
            cmd += ["--as", as_user]
        proc = subprocess.run(
            [*cmd, *args], input=input, capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, cmd + list(args), proc.stdout, proc.stderr
            )
        return proc

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]] | str, **kw: Any) -> str:
        text = (
            manifest
            if isinstance(manifest, str)
            else yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest])
        )
        return self.kubectl("apply", "-f", "-", input=text, **kw).stdout

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def add_gpu_nodes(self, names: Sequence[str] = GPU_NODES, gpus: int = 8) -> None:
        """Fake nodes that KWOK keeps Ready, each with `nvidia.com/gpu` capacity."""
        for name in names:
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "nvidia.com/gpu.present": "true",
                    },
                },
                "spec": {},
                "status": {
                    "allocatable": {
                        "cpu": "64",
                        "memory": "512Gi",
                        "pods": "500",
                        "nvidia.com/gpu": str(gpus),
                    },
                    "capacity": {
                        "cpu": "64",
                        "memory": "512Gi",
                        "pods": "500",
                        "nvidia.com/gpu": str(gpus),
                    },
                },
            }
            self.apply(node)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = self.get_json("nodes")["items"]
            ready = [
                n
                for n in nodes
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            ]
            if len(ready) >= len(names):
                return
            time.sleep(0.5)
        raise TimeoutError(f"KWOK nodes never became Ready; {self.describe_logs()}")

    def metrics(self) -> str:
        return self.raw_get("/metrics", timeout=30)
