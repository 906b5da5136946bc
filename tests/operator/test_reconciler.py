"""The shared reconciler (common/reconciler.py) with the API calls faked: one status write
per change with its Events and the phase gauge, once per generation, one retry mechanism,
the finalizer's ordered teardown, and forgetting."""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Any

import kopf
import pytest
from prometheus_client import Gauge

from sealtune_operator.common import reconciler as rc
from sealtune_operator.common.conditions import Rules

Manifest = dict[str, Any]
RULES = Rules(order=("Step", "Ready"), ok_phases=frozenset({"Done"}), must_hold=frozenset({"Step"}))
GAUGE = Gauge("sealtune_test_objects", "test objects by phase", ["phase"])


class FakeApi:
    """What the reconciler sends to the API server and posts as Events."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.patches: list[tuple[str, Manifest]] = []
        self.events: list[tuple[str, str, str]] = []
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.conflict = False
        monkeypatch.setattr(rc.kube, "patch_status", self.patch_status)
        monkeypatch.setattr(rc.kube, "patch_metadata", self.patch_metadata)
        monkeypatch.setattr(rc.kube, "get_custom", self.get_custom)
        monkeypatch.setattr(rc.kopf, "event", self.event)

    def patch_status(self, plural: str, namespace: str, name: str, status: Manifest) -> None:
        self.patches.append(("status", status))

    def patch_metadata(self, plural: str, namespace: str, name: str, meta: Manifest) -> None:
        if self.conflict:
            self.conflict = False
            raise rc.ApiException(status=409)
        self.patches.append(("metadata", meta))

    def get_custom(self, plural: str, namespace: str, name: str) -> Manifest | None:
        return self.objects.get((namespace, name))

    def event(self, body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    return FakeApi(monkeypatch)


def reconciler(
    reconcile: Any = None, teardown: Any = None, finalizer: bool = False
) -> rc.Reconciler:
    """A Reconciler of a test kind, registered with a registry of its own."""
    r = rc.Reconciler(
        "Thing", "things", RULES, GAUGE, finalizer=finalizer, registry=kopf.OperatorRegistry()
    )
    r.watch(reconcile or (lambda body, ix: "done"), lambda body, current, ix: None, teardown)
    return r


def obj(name: str = "x", generation: int = 1, **meta: Any) -> Manifest:
    return {
        "apiVersion": "sealtune.io/v1alpha1",
        "kind": "Thing",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": generation,
            "resourceVersion": "7",
            **meta,
        },
        "spec": {},
    }


def status(phase: str, ok: bool, reason: str) -> Manifest:
    edit = RULES.edit({}, 1, "t0").set("Step", ok, reason, f"step {reason}")
    return edit.summarize(phase, reason, f"step {reason}").status


def wait(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_status_is_written_once_per_change_with_events_and_the_phase_gauge(api: FakeApi) -> None:
    r = reconciler()
    body = obj("gauge")
    assert r.write_status(body, status("Waiting", False, "Missing"))
    assert not r.write_status(body, status("Waiting", False, "Missing"))  # cached: no write
    assert r.write_status(body, status("Done", True, "Found"))
    assert [p[0] for p in api.patches] == ["status", "status"]
    assert api.events == [
        ("Warning", "Missing", "step Missing"),
        ("Normal", "Found", "step Found"),
    ]
    assert GAUGE.labels("Done")._value.get() == 1 and GAUGE.labels("Waiting")._value.get() == 0
    r.forget(("ns", "gauge"))
    assert GAUGE.labels("Done")._value.get() == 0


def test_reconciles_once_per_generation_and_forgets_on_delete(api: FakeApi) -> None:
    seen: list[int] = []

    def reconcile(body: Manifest, ix: Any) -> str:
        seen.append(body["metadata"]["generation"])
        return "done"

    r = reconciler(reconcile)
    r.handle("ADDED", obj("once"), {})
    r.handle("MODIFIED", obj("once"), {})  # e.g. our own status write
    r.handle(None, obj("once"), {}, force=True)  # a referenced object changed
    r.handle("MODIFIED", obj("once", generation=2), {})
    r.handle("DELETED", obj("once", generation=2), {})
    r.handle(None, obj("once", generation=2), {})  # a new object of the same name
    assert seen == [1, 1, 2, 2]


def test_retry_reruns_the_newest_object_later(api: FakeApi) -> None:
    calls: list[int] = []

    def reconcile(body: Manifest, ix: Any) -> str:
        calls.append(body["metadata"]["generation"])
        if len(calls) == 1:
            raise rc.Retry("not yet", delay=0.01)
        return "done"

    r = reconciler(reconcile)
    api.objects[("ns", "retry")] = obj("retry", generation=3)
    r.handle("ADDED", obj("retry"), {})
    wait(lambda: len(calls) == 2)
    assert calls == [1, 3]  # the retry read the newest copy
    r.handle("MODIFIED", obj("retry", generation=3), {})
    assert calls == [1, 3], "done after the retry succeeded"


def test_an_unexpected_error_is_counted_and_retried(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rc, "RETRY_SECONDS", 0.01)
    calls: list[str] = []

    def reconcile(body: Manifest, ix: Any) -> str:
        calls.append("run")
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "done"

    r = reconciler(reconcile)
    api.objects[("ns", "boom")] = obj("boom")
    before = rc.metrics.ERRORS.labels("Thing", "unexpected")._value.get()
    r.handle("ADDED", obj("boom"), {})
    wait(lambda: len(calls) == 2)
    assert rc.metrics.ERRORS.labels("Thing", "unexpected")._value.get() == before + 1


def test_finalizer_is_added_first_and_removed_after_the_teardown(api: FakeApi) -> None:
    order: list[str] = []
    remaining = {"pods": 1}

    def reconcile(body: Manifest, ix: Any) -> str:
        order.append("reconcile")
        return "done"

    def teardown(body: Manifest, ix: Any) -> None:
        order.append("teardown")
        if remaining["pods"]:
            remaining["pods"] -= 1
            raise rc.Retry("waiting for pods", delay=0.01)

    r = reconciler(reconcile, teardown, finalizer=True)
    r.handle("ADDED", obj("fin"), {})
    assert api.patches[0] == (
        "metadata",
        {"finalizers": [rc.FINALIZER], "resourceVersion": "7"},
    )
    assert order == ["reconcile"]
    deleting = obj("fin", finalizers=["other", rc.FINALIZER], deletionTimestamp="now")
    api.objects[("ns", "fin")] = deleting
    r.handle("MODIFIED", deleting, {})
    wait(lambda: len(api.patches) == 2)
    assert order == ["reconcile", "teardown", "teardown"]
    assert api.patches[1] == ("metadata", {"finalizers": ["other"], "resourceVersion": "7"})


def test_a_conflict_while_adding_the_finalizer_waits_for_the_next_event(api: FakeApi) -> None:
    ran: list[str] = []

    def handler(body: Any, index: Any) -> str:
        ran.append("x")
        return "done"

    r = reconciler(handler, finalizer=True)
    api.conflict = True
    r.handle("ADDED", obj("conflict"), {})
    assert ran == [] and api.patches == []
    r.handle("MODIFIED", obj("conflict"), {})
    assert ran == ["x"]


CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("test_context")


def test_scheduler_keeps_the_earliest_call_per_key_and_cancels() -> None:
    s = rc.Scheduler()
    fired: list[str] = []
    done = threading.Event()
    # A call runs in the context it was scheduled from (Kopf's posting context for Events).
    CONTEXT.set("handler")
    s.call_later("ctx", 0.01, lambda: fired.append(CONTEXT.get("none")))
    s.call_later("k", 0.2, lambda: fired.append("late"))
    s.call_later("k", 0.02, lambda: fired.append("early"))
    s.call_later("k", 0.5, lambda: fired.append("later still"))  # an earlier one is pending
    s.call_later("gone", 0.02, lambda: fired.append("cancelled"))
    s.cancel("gone")
    s.call_later("end", 0.3, done.set)
    assert done.wait(5)
    assert fired == ["handler", "early"]
    assert s.pending("k") is None


def test_children_refresh_their_owner_and_a_recheck_runs_once_later(api: FakeApi) -> None:
    seen: list[str] = []

    def refresh(body: Manifest, current: Manifest, ix: Any) -> Manifest:
        seen.append(current.get("phase", "-"))
        return status("Done", True, "Found")

    r = rc.Reconciler("Thing", "things", RULES, GAUGE, registry=kopf.OperatorRegistry())
    r.watch(lambda body, ix: "done", refresh)
    ix = {r.objects: {("ns", "kid"): [obj("kid")]}}
    r.refresh(("ns", "kid"), ix)
    r.refresh(("ns", "gone"), ix)  # an owner not (or no longer) known: nothing to do
    assert seen == ["-"] and len(api.patches) == 1
    r.recheck(("ns", "kid"), 0.01, ix)
    wait(lambda: len(seen) == 2)
    assert seen == ["-", "Done"] and len(api.patches) == 1  # the same status is not rewritten


def test_both_kinds_use_event_handlers_only() -> None:
    """One idiom: no create/update/delete handlers, so Kopf writes no progress or diff-base
    records into the objects (security invariant 8) and peering still applies."""
    from sealtune_operator.finetunejob import handlers as ftj
    from sealtune_operator.modelserve import handlers as ms

    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers()
    watched = {h.id for h in registry._watching.get_all_handlers()}
    assert {"finetunejobs-event", "finetunejobs-jobs", "finetunejobs-pods"} <= watched
    assert {"modelserves-event", "modelserves-deployments"} <= watched
    assert ftj.RECONCILER.finalizer is None and ms.RECONCILER.finalizer == rc.FINALIZER
