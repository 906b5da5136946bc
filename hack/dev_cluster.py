#!/usr/bin/env python3
"""Start the local control plane (etcd, kube-apiserver, controllers, KWOK GPU nodes) with the
CRDs installed, print a kubeconfig path, and keep it running until Ctrl-C.

Usage: python hack/dev_cluster.py [WORKDIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from sealtune_devkit.cluster import REPO, LocalCluster


def main() -> int:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sealtune-dev-cluster")
    with LocalCluster.start(workdir) as cluster:
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "-f", str(crd))
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        print(f"kubectl: {cluster.bin_dir / 'kubectl'}; logs: {cluster.logs}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
