"""Conditions, the summary `Ready` condition and the Events they imply (pure, both kinds).

Every kind keeps `status.phase` plus a list of kubebuilder-style conditions. One of them,
`Ready`, explains the phase: its reason and message are what `kubectl get` shows in the
REASON and MESSAGE columns. Each kind describes its conditions with one `Rules` object,
and `transitions()` turns a status change into Events with one policy for both kinds:

* a condition whose status or reason changed posts one Event with that condition's own
  message (never another condition's), unless it only mirrors `Ready` (`silent`) or its
  reason is a transient one that is not news (`quiet_reasons`);
* it is a Warning when its reason is trouble (`warning_reasons`), when it went False after
  having been True, when a condition that must hold is False (`must_hold`), or when the
  phase it explains is a bad one (`bad_phases`);
* two changes that say the same thing (same reason and message) post one Event;
* a phase change that no condition explained posts `Phase<phase>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

Manifest = dict[str, Any]

READY = "Ready"


class Event(NamedTuple):
    type: str  # Normal or Warning
    reason: str
    message: str


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(status: Manifest, ctype: str) -> Manifest:
    """The condition of that type, or {} when there is none."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def differs(stored: Manifest, computed: Manifest) -> bool:
    """True when writing `computed` would change what is stored (top-level keys)."""
    return any(stored.get(k) != v for k, v in computed.items())


@dataclass(frozen=True)
class Rules:
    """The conditions of one kind and when their changes are news."""

    order: tuple[str, ...]  # every condition type, in display order; others are dropped
    ok_phases: frozenset[str]  # phases in which `Ready` is True
    silent: frozenset[str] = frozenset()
    quiet_reasons: frozenset[str] = frozenset()
    warning_reasons: frozenset[str] = frozenset()
    must_hold: frozenset[str] = frozenset()
    bad_phases: frozenset[str] = frozenset({"Failed", "Degraded"})
    # Phases a failed set-up step does not override (the object keeps serving).
    serving_phases: frozenset[str] = frozenset({"Ready", "Degraded"})

    def edit(self, status: Manifest, generation: int, at: str | None = None) -> Edit:
        return Edit(self, status, generation, at or now())

    def severity(self, cond: Manifest, prev: Manifest | None, phase: str | None) -> str | None:
        """Normal, Warning, or None when the change is not news."""
        ctype, reason, value = cond["type"], cond["reason"], cond["status"]
        if ctype in self.silent or reason in self.quiet_reasons:
            return None
        trouble = (
            reason in self.warning_reasons
            or (value == "False" and ctype in self.must_hold)
            or (value == "False" and prev is not None and prev.get("status") == "True")
            or (ctype == READY and phase in self.bad_phases)
        )
        return "Warning" if trouble else "Normal"

    def transitions(self, before: Manifest, after: Manifest) -> list[Event]:
        """One Event per condition that changed and is news; `Phase<phase>` otherwise."""
        events: list[Event] = []
        old = {c["type"]: c for c in before.get("conditions") or []}
        phase = after.get("phase")
        for cond in after.get("conditions") or []:
            prev = old.get(cond["type"])
            if prev and (prev.get("status"), prev.get("reason")) == (
                cond["status"],
                cond["reason"],
            ):
                continue
            kind = self.severity(cond, prev, phase)
            message = cond.get("message") or f"{cond['type']} is {cond['status']}"
            if kind is None or any(
                (e.reason, e.message) == (cond["reason"], message) for e in events
            ):
                continue
            events.append(Event(kind, cond["reason"], message))
        if before.get("phase") != phase and not events and phase:
            kind = "Warning" if phase in self.bad_phases else "Normal"
            events.append(Event(kind, f"Phase{phase}", f"phase is {phase}"))
        return events


class Edit:
    """One status being rewritten for one generation at one time (pure: a copy)."""

    def __init__(self, rules: Rules, status: Manifest, generation: int, at: str) -> None:
        self.rules = rules
        self.generation = generation
        self.at = at
        phase = status.get("phase") or "Pending"
        self.status: Manifest = {**status, "phase": phase, "observedGeneration": generation}

    def set(self, ctype: str, ok: bool, reason: str, message: str, explain: bool = False) -> Edit:
        """Upsert one condition; lastTransitionTime moves only when its status flips.

        Condition types the kind does not know (left by an older operator) are dropped.
        With `explain`, a failed step also explains the phase (unless the object serves).
        """
        value = "True" if ok else "False"
        conditions = list(self.status.get("conditions") or [])
        previous: Manifest = next((c for c in conditions if c.get("type") == ctype), {})
        updated = {
            "type": ctype,
            "status": value,
            "reason": reason,
            "message": message,
            "observedGeneration": self.generation,
            "lastTransitionTime": previous.get("lastTransitionTime", self.at)
            if previous.get("status") == value
            else self.at,
        }
        order = self.rules.order
        kept = [c for c in conditions if c.get("type") in order and c.get("type") != ctype]
        self.status["conditions"] = sorted([*kept, updated], key=lambda c: order.index(c["type"]))
        if explain and not ok and self.status["phase"] not in self.rules.serving_phases:
            self.summarize(self.status["phase"], reason, message)
        return self

    def summarize(self, phase: str, reason: str, message: str) -> Edit:
        """Set the phase and the `Ready` condition that explains it."""
        self.status["phase"] = phase
        return self.set(READY, phase in self.rules.ok_phases, reason, message)
