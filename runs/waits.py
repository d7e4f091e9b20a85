"""Waits as data: what a waiting run waits for, and how to tell that it is over.

A run that cannot go on without an event records a wait (Run.wait_kind and Run.wait_ref, and
Run.wake_at for a sleep) and releases its worker. Each kind of event has one waker, which moves
the runs waiting for it back to the queue through runs.moves.wake, and one sweeper query
(`due`), which finds the runs whose wake-up was lost. Run.status_reason is for people only.

| kind     | reference        | over when                                   | woken by                    |
|----------|------------------|---------------------------------------------|-----------------------------|
| sleep    | (wake_at)        | wake_at has passed                          | the scheduled job           |
| child    | child run id     | the child run finished                      | the child's finishing move  |
| approval | approval id      | the request is no longer pending            | the decision, or the expiry |
| freeze   | (none)           | no freeze covers the run's agent            | lifting the freeze          |
| retry    | the step's seq   | wake_at has passed (backoff, open breaker)  | the scheduled job, or an    |
|          |                  |                                             | operator's "retry now"      |
"""

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef
from django.db.models.functions import Cast, Now
from django.utils import timezone

from runs.models import FINISHED, Run, WaitKind
from runs.moments import moment_text
from tools.models import Approval, ApprovalStatus, FreezeState


@dataclass(frozen=True)
class WaitFor:
    """What a run is about to wait for, as the protocol found it."""

    kind: str
    ref: str = ""
    wake_at: datetime | None = None
    # For people (Run.status_reason); nothing decides on it.
    reason: str = ""

    @classmethod
    def sleep(cls, wake_at):
        return cls(WaitKind.SLEEP, "", wake_at, f"sleeping until {moment_text(wake_at)}")

    @classmethod
    def child(cls, child_id):
        return cls(WaitKind.CHILD, str(child_id), None, f"waiting for child run {str(child_id)[:8]}")

    @classmethod
    def approval(cls, approval):
        return cls(
            WaitKind.APPROVAL, str(approval.id), None,
            f"waiting for approval of step {approval.seq} ({approval.tool}), until "
            f"{moment_text(approval.expires_at)}",
        )

    @classmethod
    def retry(cls, seq, wake_at, why):
        """Step `seq` is tried again at wake_at: `why` says what it waits out (a backoff after a
        failed attempt, a tool's open breaker)."""
        return cls(WaitKind.RETRY, str(seq), wake_at, f"step {seq}: {why}; trying again {moment_text(wake_at)}")

    @classmethod
    def freeze(cls, reason):
        return cls(WaitKind.FREEZE, "", None, f"frozen: {reason}")


def is_over(wait, agent):
    """Whether the event has already happened, read under a lock on what it refers to.

    Called in the transaction that would make the run wait, before its own lock: the event's
    waker takes the same lock first, so either it sees the run waiting, or we see the event.
    """
    if wait.kind in (WaitKind.SLEEP, WaitKind.RETRY):
        return wait.wake_at <= timezone.now()
    if wait.kind == WaitKind.CHILD:
        child = Run.objects.select_for_update().only("status").get(id=wait.ref)
        return child.status in FINISHED
    if wait.kind == WaitKind.APPROVAL:
        approval = Approval.objects.select_for_update().only("status").get(id=int(wait.ref))
        return approval.status != ApprovalStatus.PENDING
    if wait.kind == WaitKind.FREEZE:
        # FOR NO KEY UPDATE: it waits for a lift in flight (FOR UPDATE), but not for the write
        # intents (FOR KEY SHARE).
        state = FreezeState.objects.select_for_update(no_key=True).filter(id=1).first()
        return state is not None and not state.reason_for(agent)
    raise ValueError(f"unknown kind of wait {wait.kind!r}")


# The sweeper's queries, one per kind: ids of runs that still wait for an event that happened.


def _due_sleeps():
    return Run.objects.waiting_for(WaitKind.SLEEP).filter(wake_at__lte=Now())


def _due_retries():
    return Run.objects.waiting_for(WaitKind.RETRY).filter(wake_at__lte=Now())


def _due_children():
    finished = Run.objects.filter(id=Cast(OuterRef("wait_ref"), output_field=Run._meta.pk), status__in=FINISHED)
    return Run.objects.waiting_for(WaitKind.CHILD).filter(Exists(finished))


def _due_approvals():
    decided = Approval.objects.filter(
        id=Cast(OuterRef("wait_ref"), output_field=Approval._meta.pk)
    ).exclude(status=ApprovalStatus.PENDING)
    return Run.objects.waiting_for(WaitKind.APPROVAL).filter(Exists(decided))


def _due_freezes():
    # The freeze's rule is FreezeState.reason_for; the query only narrows to the waiting runs.
    state = FreezeState.current()
    if state is None:
        return Run.objects.none()
    waiting = Run.objects.waiting_for(WaitKind.FREEZE).values_list("id", "agent")
    return Run.objects.filter(id__in=[run_id for run_id, agent in waiting if not state.reason_for(agent)])


DUE = {
    WaitKind.SLEEP: _due_sleeps,
    WaitKind.CHILD: _due_children,
    WaitKind.APPROVAL: _due_approvals,
    WaitKind.FREEZE: _due_freezes,
    WaitKind.RETRY: _due_retries,
}


def due(kind):
    """(run id, wait ref) of the runs waiting for an event of this kind that has happened."""
    return list(DUE[kind]().values_list("id", "wait_ref"))

