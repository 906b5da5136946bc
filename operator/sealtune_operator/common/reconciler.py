"""The one reconciler both kinds run on.

Kopf delivers events (an `on.event` handler per kind and per child kind; no create/update
handlers, so Kopf keeps no progress or diff-base records and writes nothing of its own).
A `Reconciler` holds, per object:

* a lock: the kind's event, its children's events and retries never interleave;
* the status it last wrote, so a burst of events does not re-patch the same status;
* the (uid, generation) it last acted on, so the events caused by its own status writes
  (and every later event of an unchanged spec) are no-ops;
* a scratch `memo` for what the kind itself remembers (e.g. applied digests).

`write_status` is the only way status is written: a merge patch when something changed,
one Event per transition (`conditions.Rules.transitions`) and the phase gauge. `Retry` is
the only way to try again later: raised from a reconcile or teardown, it re-runs that object
with its newest copy after the delay (one pending run per object, the earliest wins); an
unexpected error retries the same way. `recheck` schedules a one-shot status refresh (a
pod that has waited too long); nothing polls. An optional finalizer runs a kind's ordered
teardown before the object goes; `forget` drops everything once it is gone.
"""

from __future__ import annotations

import contextvars
import functools
import heapq
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import Gauge

from sealtune_api.finetunejob import GROUP, VERSION
from sealtune_operator import metrics
from sealtune_operator.common import kube
from sealtune_operator.common.conditions import Edit, Manifest, Rules, differs
from sealtune_operator.common.render import MANAGED_BY

Key = tuple[str, str]
# Kopf's keyword arguments to a handler: every index by its id (and Kopf's own extras).
Indexes = Mapping[str, Any]
Reconcile = Callable[[Manifest, Indexes], str]
Refresh = Callable[[Manifest, Manifest, Indexes], Manifest | None]
Teardown = Callable[[Manifest, Indexes], None]
FINALIZER = "sealtune.io/finalizer"
RETRY_SECONDS = 15.0


class Retry(Exception):
    """Raised by a reconcile or teardown: run it again after `delay` seconds."""

    def __init__(self, message: str, delay: float = RETRY_SECONDS) -> None:
        super().__init__(message)
        self.delay = delay


class Scheduler:
    """Delayed calls on one daemon thread; at most one pending call per key (the earliest).

    A call runs in the context it was scheduled from (Kopf's context variables included,
    so `kopf.event` works from it as it does from a handler).
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Hashable, Callable[[], None]]] = []
        self._due: dict[Hashable, float] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, key: Hashable, delay: float, fn: Callable[[], None]) -> None:
        due = time.monotonic() + max(0.0, delay)
        with self._cv:
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            call: Callable[[], None] = functools.partial(contextvars.copy_context().run, fn)
            heapq.heappush(self._heap, (due, next(self._seq), key, call))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sealtune-retry", daemon=True
                )
                self._thread.start()
            self._cv.notify()

    def cancel(self, key: Hashable) -> None:
        with self._cv:
            self._due.pop(key, None)

    def pending(self, key: Hashable) -> float | None:
        """Seconds until the call for `key` runs, or None."""
        with self._cv:
            due = self._due.get(key)
        return None if due is None else max(0.0, due - time.monotonic())

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cv.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                due, _, key, fn = heapq.heappop(self._heap)
                if self._due.get(key) != due:
                    continue  # cancelled or superseded by an earlier call
                del self._due[key]
            try:
                fn()
            except Exception:
                logging.getLogger("sealtune").exception("scheduled call for %s failed", key)


SCHEDULER = Scheduler()


def key_of(body: Manifest) -> Key:
    return body["metadata"]["namespace"], body["metadata"]["name"]


def one(index: Any, key: Hashable) -> Any:
    """The single value a Kopf index holds under `key`, or None."""
    store = index.get(key)
    return next(iter(store), None) if store else None


class Reconciler:
    """Per-object state and the one way to write status, post Events and retry, for a kind.

    A kind registers its indexes and its three functions, all of them given Kopf's indexes:
    `reconcile(body, ix) -> result label` (create or apply children, write status) on every
    new generation, `refresh(body, current, ix) -> status | None` on every child event, and
    optionally `teardown(body, ix)` (raise `Retry` to wait) before its finalizer goes.
    """

    def __init__(
        self,
        kind: str,
        plural: str,
        rules: Rules,
        gauge: Gauge,
        *,
        finalizer: bool = False,
        registry: kopf.OperatorRegistry | None = None,
    ) -> None:
        self.kind = kind
        self.registry = registry or kopf.get_default_registry()
        self.plural = plural
        self.rules = rules
        self.gauge = gauge
        self.finalizer = FINALIZER if finalizer else None
        self.log = logging.getLogger(f"sealtune.{kind.lower()}")
        # Every child carries these labels; child watches select on them.
        self.owner_label = f"sealtune.io/{kind.lower()}"
        self.child_filter: dict[str, Any] = {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            self.owner_label: kopf.PRESENT,
        }
        self.objects = f"{plural}_by_name"  # the id of the index of the kind's objects
        self._reconcile: Reconcile = lambda body, ix: "unregistered"
        self._refresh: Refresh = lambda body, current, ix: None
        self._teardown: Teardown | None = None
        self._locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
        self._written: dict[Key, Manifest] = {}
        self._done: dict[Key, tuple[str, int]] = {}
        self._phases: dict[Key, str] = {}
        self.memo: defaultdict[Key, dict[str, Any]] = defaultdict(dict)
        kopf.index(GROUP, VERSION, plural, id=self.objects, registry=self.registry)(self._by_name)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------ registration

    @staticmethod
    def _by_name(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): dict(body)}

    def index_children(
        self, index_id: str, group: str, version: str, plural: str, whole: bool = True
    ) -> None:
        """A Kopf index of the kind's children of one resource: (namespace, owner name) ->
        body (or just True, when only their existence matters)."""
        label = self.owner_label

        def by_owner(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
            return {(namespace, labels[label]): dict(body) if whole else True}

        register = kopf.index(
            group, version, plural, id=index_id, labels=self.child_filter, registry=self.registry
        )
        register(by_owner)  # type: ignore[arg-type]

    def watch(
        self, reconcile: Reconcile, refresh: Refresh, teardown: Teardown | None = None
    ) -> None:
        """Every event of the kind (the initial listing after a restart included) goes to
        `handle`; no create/update handlers, so Kopf keeps no records in the object."""
        self._reconcile, self._refresh, self._teardown = reconcile, refresh, teardown

        def on_event(type: str | None, body: kopf.Body, **ix: Any) -> None:
            self.handle(type, dict(body), ix)

        kopf.on.event(
            GROUP, VERSION, self.plural, id=f"{self.plural}-event", registry=self.registry
        )(on_event)

    def watch_children(self, group: str, version: str, plural: str) -> None:
        """Every event of a child of this resource refreshes its owner's status."""

        def on_child_event(namespace: str, labels: kopf.Labels, **ix: Any) -> None:
            self.refresh((namespace, labels[self.owner_label]), ix)

        register = kopf.on.event(
            group,
            version,
            plural,
            labels=self.child_filter,
            id=f"{self.plural}-{plural}",
            registry=self.registry,
        )
        register(on_child_event)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------ state

    def lock(self, key: Key) -> threading.Lock:
        return self._locks[key]

    def current(self, key: Key, body: Manifest) -> Manifest:
        """The status as this process last wrote it, else as stored."""
        return dict(self._written.get(key) or body.get("status") or {})

    def _version(self, body: Manifest) -> tuple[str, int]:
        meta = body["metadata"]
        return str(meta.get("uid")), int(meta.get("generation", 1))

    def _count(self, key: Key, phase: str | None) -> None:
        """Keep the phase gauge: each known object counted once, under its phase."""
        old = self._phases.get(key)
        if not phase or old == phase:
            return
        if old:
            self.gauge.labels(old).dec()
        self.gauge.labels(phase).inc()
        self._phases[key] = phase

    def forget(self, key: Key) -> None:
        """The object is gone: drop what this process remembers of it."""
        for what in ("reconcile", "refresh"):
            SCHEDULER.cancel((self.kind, *key, what))
        self._done.pop(key, None)
        self._written.pop(key, None)
        self._locks.pop(key, None)
        self.memo.pop(key, None)
        phase = self._phases.pop(key, None)
        if phase:
            self.gauge.labels(phase).dec()

    # ------------------------------------------------------------------------ status

    def write_status(self, body: Manifest, new: Manifest) -> bool:
        """Patch status if it changed; one Event per transition; keep the phase gauge."""
        key = key_of(body)
        stored = self._written.get(key) or dict(body.get("status") or {})
        if not differs(stored, new):
            return False
        kube.patch_status(self.plural, key[0], key[1], new)
        self._written[key] = {**stored, **new}
        for event in self.rules.transitions(stored, new):
            kopf.event(
                cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message
            )
        self._count(key, new.get("phase"))
        return True

    def write_children(
        self,
        body: Manifest,
        edit: Edit,
        children: list[Manifest],
        write: Callable[[Manifest], Any],
        isolated: tuple[str, str],
    ) -> None:
        """Write children in order, NetworkPolicy first (recorded as NetworkIsolated=True with
        `isolated` = (reason, message)). At the first refusal nothing after it is written:
        the status says why (NetworkIsolated or ResourcesReady) and the object is retried."""
        for child in children:
            kind = child["kind"]
            try:
                write(child)
            except ApiException as exc:
                err = kube.explain(exc, f"{kind} {child['metadata']['name']}")
                ctype = "NetworkIsolated" if kind == "NetworkPolicy" else "ResourcesReady"
                edit.set(ctype, False, f"{kind}{err.reason}", err.message, explain=True)
                self.write_status(body, edit.status)
                metrics.ERRORS.labels(self.kind, kind).inc()
                raise Retry(f"writing {kind} failed: {err.message}") from exc
            if kind == "NetworkPolicy":
                edit.set("NetworkIsolated", True, *isolated)

    def refresh(self, key: Key, ix: Indexes) -> None:
        """Recompute an object's status from its children (the kind's `refresh`)."""
        body = one(ix[self.objects], key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        with self.lock(key):
            new = self._refresh(body, self.current(key, body), ix)
            if new is not None:
                self.write_status(body, new)

    def recheck(self, key: Key, delay: float, ix: Indexes) -> None:
        """Refresh once after `delay` seconds: time-based states without polling."""
        SCHEDULER.call_later((self.kind, *key, "refresh"), delay, lambda: self.refresh(key, ix))

    # ------------------------------------------------------------------------ events

    def handle(
        self, event_type: str | None, body: Manifest, ix: Indexes, force: bool = False
    ) -> None:
        """An event of the kind itself: forget, tear down, or reconcile once per generation
        (`force`: again for an unchanged one, because something it depends on changed)."""
        key = key_of(body)
        meta = body["metadata"]
        if event_type == "DELETED":
            self.forget(key)
            return
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if self.finalizer in finalizers and self._teardown is not None:
                self._guarded(body, ix, lambda: self._finish(body, ix))
            return
        self._count(key, self.current(key, body).get("phase"))
        if self.finalizer and self.finalizer not in finalizers:
            wanted = {"finalizers": [*finalizers, self.finalizer]}
            if not self._patch_metadata(body, wanted):
                return  # gone, or changed meanwhile: the next event carries the newer copy
        if not force and self._done.get(key) == self._version(body):
            return
        self._guarded(body, ix, lambda: self._run(body, ix, force))

    def _patch_metadata(self, body: Manifest, metadata: Manifest) -> bool:
        """Merge-patch metadata at the object's resourceVersion; False if gone or stale."""
        meta = body["metadata"]
        try:
            kube.patch_metadata(
                self.plural,
                meta["namespace"],
                meta["name"],
                {**metadata, "resourceVersion": meta.get("resourceVersion")},
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def _run(self, body: Manifest, ix: Indexes, force: bool) -> None:
        key = key_of(body)
        started = time.monotonic()
        with self.lock(key):
            if not force and self._done.get(key) == self._version(body):
                return
            result = self._reconcile(body, ix)
            self._done[key] = self._version(body)
        metrics.RECONCILES.labels(self.kind, result).inc()
        metrics.LATENCY.labels(self.kind).observe(time.monotonic() - started)

    def _finish(self, body: Manifest, ix: Indexes) -> None:
        assert self._teardown is not None
        with self.lock(key_of(body)):
            self._teardown(body, ix)
            kept = [f for f in body["metadata"].get("finalizers") or [] if f != self.finalizer]
            if not self._patch_metadata(body, {"finalizers": kept}):
                raise Retry("the object changed during its teardown", delay=1)

    def _guarded(self, body: Manifest, ix: Indexes, run: Callable[[], None]) -> None:
        """Run; on `Retry` or an unexpected error, run the object again later."""
        key = key_of(body)
        try:
            run()
            return
        except Retry as retry:
            delay = retry.delay
            self.log.info("%s/%s: retrying in %ss: %s", *key, delay, retry)
        except Exception:
            delay = RETRY_SECONDS
            metrics.ERRORS.labels(self.kind, "unexpected").inc()
            self.log.exception("%s/%s: reconcile failed; retrying in %ss", *key, delay)

        def again() -> None:
            newest = kube.get_custom(self.plural, *key)
            if newest is not None:
                self.handle(None, newest, ix, force=True)

        SCHEDULER.call_later((self.kind, *key, "reconcile"), delay, again)
