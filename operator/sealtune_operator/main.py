"""`sealtune-operator`: the operator process (Kopf) with metrics, liveness and peering."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from sealtune_operator.common import kube
from sealtune_operator.settings import OperatorSettings, configure


class NoDiffBase(kopf.DiffBaseStorage):
    """No change detection: every handler is an event handler, so Kopf need not deep-copy
    and diff each object it sees (most of its CPU time per event) nor store a diff base."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _priority(value: str) -> int:
    """`auto` gives every replica a distinct, stable priority derived from its pod name."""
    if value != "auto":
        return int(value)
    ident = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return 100 + int(hashlib.sha256(ident.encode()).hexdigest()[:6], 16) % 10_000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sealtune-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; globs allowed)",
    )
    parser.add_argument(
        "--peering",
        default="sealtune",
        help="Kopf peering object shared by the replicas (default: sealtune)",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="no peering: only for a single local process"
    )
    parser.add_argument(
        "--priority",
        default="auto",
        help="peering priority; 'auto' derives a distinct one per replica",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port (0: off)")
    parser.add_argument(
        "--health-port",
        type=int,
        default=8081,
        help="liveness endpoint port, serves /healthz (0: off)",
    )
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--workers", type=int, default=32, help="threads for sync handlers")
    args = parser.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        args.all_namespaces = True
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure(OperatorSettings.from_env())
    # Importing the handlers registers them (and their indexes) with Kopf's registry.
    from sealtune_operator.finetunejob import handlers as _finetunejob  # noqa: F401
    from sealtune_operator.modelserve import handlers as _modelserve  # noqa: F401

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    priority = _priority(args.priority)
    if not args.verbose:
        # Kopf logs every handler run per object at INFO; that is debugging detail, and at
        # hundreds of jobs it costs more CPU than the reconciliation itself.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    @kopf.on.startup()
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Only event handlers (common/reconciler.py): Kopf keeps no progress or diff-base
        # records, so it writes nothing into the objects; the operator's bookkeeping lives
        # in its own status fields, never in the user's spec or annotations.
        settings.persistence.diffbase_storage = NoDiffBase()
        # Events are posted explicitly, one per transition; handler logs stay in logs.
        settings.posting.level = logging.CRITICAL + 1
        settings.execution.max_workers = args.workers
        settings.peering.mandatory = not args.standalone
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        kube.warm()

    if args.metrics_port:
        start_http_server(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    logging.getLogger("sealtune").info(
        "starting",
        extra={
            "priority": priority,
            "peering": args.peering,
            "namespaces": args.namespace or ["*"],
        },
    )
    try:
        kopf.run(
            clusterwide=args.all_namespaces,
            namespaces=list(args.namespace),
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=priority,
            liveness_endpoint=liveness,
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
