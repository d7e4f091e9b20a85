"""Every move of a run's status, in one place: create, claim, move, suspend, wake, request.

A move is one transaction: it locks the run row, checks that the move is legal (TRANSITIONS;
a trigger in the database refuses any other), writes the new state and its event row, and
returns what it did as a Moved. It never changes its target behind the caller's back: a run
that is asked to leave `running` for the queue or a wait while an operator's pause or cancel is
pending does not move, and the Moved says so (`pending`), so the caller honours the request
with a move of its own.

What follows a move is done after commit, here and nowhere else:
- a run that became queued gets a job ("advance run R") on the queue;
- a run that went to sleep gets a scheduled wake-up;
- a run that finished wakes its parent, if the parent waits for it.
"""

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from runs import budgets, live, queue, storable, waits
from runs.actors import SCHEDULER, Actor
from runs.agents import InvalidInput, get_agent
from runs.models import FINISHED, Requested, Run, RunEvent, RunStatus, WaitKind
from runs.storable import visible

S = RunStatus
log = logging.getLogger(__name__)

# Every legal move of a run's status. A trigger in the database refuses any other (migrations
# 0002 and 0006 write this table into it; a test checks that the two agree).
TRANSITIONS = {
    S.QUEUED: {S.RUNNING, S.PAUSED, S.CANCELLED},
    # running -> queued: the lease expired (the worker died) and the sweeper hands it back, or
    # what the run was about to wait for had already happened.
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.WAITING, S.PAUSED, S.NEEDS_ATTENTION, S.QUEUED},
    S.WAITING: {S.QUEUED, S.PAUSED, S.CANCELLED},
    S.PAUSED: {S.QUEUED, S.CANCELLED, S.COMPENSATING},
    # needs_attention -> queued: an operator resolved the step in doubt.
    S.NEEDS_ATTENTION: {S.QUEUED, S.CANCELLED, S.COMPENSATING},
    S.SUCCEEDED: set(),
    S.FAILED: {S.COMPENSATING},
    S.CANCELLED: {S.COMPENSATING},
    S.COMPENSATING: {S.COMPENSATED, S.COMPENSATION_FAILED},
    S.COMPENSATED: set(),
    # A rollback that stopped at a failed compensation goes on once an operator retries it or
    # resolves that step (migration 0006).
    S.COMPENSATION_FAILED: {S.COMPENSATING, S.COMPENSATED},
}
# Settled: nothing more happens without a person.
SETTLED = FINISHED | {S.NEEDS_ATTENTION, S.PAUSED}
# Statuses whose reason is worth showing (what the run waits for, what a person must do).
EXPLAINED = {S.WAITING, S.PAUSED, S.NEEDS_ATTENTION, S.COMPENSATING, S.COMPENSATION_FAILED}

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class IllegalTransition(Exception):
    """The move is not one of TRANSITIONS from where the run stands."""


class InvalidIdempotencyKey(ValueError):
    pass


@dataclass(frozen=True)
class Lease:
    """A worker's claim on a running run. Every journal write is fenced by its epoch."""

    run_id: object
    owner: str
    epoch: int
    # What the claim read of the run, so that the advance need not read it again.
    agent: str = ""
    input: Any = None
    during_freeze: bool = False
    # The run's budget limits, and an operator's "retry now" as (seq, after attempt) or None.
    budget: Any = None
    retry_grant: tuple | None = None


@dataclass(frozen=True)
class Moved:
    """What a move did. `done` is False when a condition no longer held (`why_not` says which),
    or when an operator's request is pending (`pending` is "pause" or "cancel")."""

    done: bool
    run: Run | None = None
    before: str = ""
    after: str = ""
    why_not: str = ""
    pending: str = ""

    @property
    def status(self):
        return self.run.status if self.run is not None else None


# Starting a run --------------------------------------------------------------------------------


def start_run(agent_name, input, *, started_by, idempotency_key=None, parent_id=None, rollback_of_id=None,
              during_freeze=False, budget=None):
    """Create a queued run and enqueue it. The same idempotency key returns the same run.

    Raises UnknownAgent, InvalidInput (a bad budget too) or InvalidIdempotencyKey, each naming
    the problem, before anything is written. `started_by` is an Actor. `budget` overrides some of
    the agent's budget limits ({name: limit or None}; runs/budgets.py).
    """
    agent = get_agent(agent_name)
    try:
        limits = budgets.limits_for(agent.budget, budgets.checked_limits(budget or {}, "this start"))
    except budgets.InvalidBudget as error:
        raise InvalidInput(str(error)) from None
    _check_input_limits(input)
    data = agent.dump_input(agent.parse_input(input))
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidIdempotencyKey(
            f"idempotency key {idempotency_key!r} is malformed: use 1 to 200 letters, digits, "
            "and . _ : - , starting with a letter or digit"
        )
    if idempotency_key is not None:
        existing = _run_for_key(idempotency_key, agent_name, data)
        if existing:
            return existing
    try:
        with transaction.atomic():
            run = _insert_queued(started_by, agent=agent_name, input=data,
                                 idempotency_key=idempotency_key, parent_id=parent_id,
                                 rollback_of_id=rollback_of_id, during_freeze=during_freeze, budget=limits)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # Another caller started the same key at the same moment.
        existing = _run_for_key(idempotency_key, agent_name, data)
        if existing is None:
            raise
        return existing
    return run


def _check_input_limits(input):
    """What any door may hand a run (the page, the command line, a parent run): its input
    within RUN_INPUT_MAX_BYTES as JSON, nested at most storable.MAX_DEPTH deep, and storable."""
    if storable.deeper_than(input):
        raise InvalidInput(f"the input is nested more than {storable.MAX_DEPTH} levels deep")
    size = len(json.dumps(input, default=str).encode())
    if size > settings.RUN_INPUT_MAX_BYTES:
        raise InvalidInput(f"the input is {size:,} bytes as JSON; the limit is "
                           f"{settings.RUN_INPUT_MAX_BYTES:,} (setting RUN_INPUT_MAX_BYTES)")
    problem = storable.unstorable(input)
    if problem:
        raise InvalidInput(f"the input holds {problem}, which cannot be stored")


def _run_for_key(key, agent_name, data):
    run = Run.objects.filter(idempotency_key=key).first()
    if run is not None and (run.agent != agent_name or run.input != data):
        raise InvalidIdempotencyKey(
            f"idempotency key {key!r} already started run {run.id} of agent {run.agent!r} "
            "with a different input; use a new key for a different request"
        )
    return run


# The claim: queued -> running under a fresh lease ------------------------------------------

CLAIM_SQL = """
WITH claimed AS (
    UPDATE runs_run
    SET status = 'running', lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_epoch = lease_epoch + 1, started_at = COALESCE(started_at, now()), updated_at = now()
    WHERE id = %(run)s AND status = 'queued'
    RETURNING id, lease_epoch, agent, input, during_freeze, budget, retry_grant_seq, retry_grant_after
), event AS (
    INSERT INTO runs_runevent (run_id, at, kind, from_status, to_status, actor, reason)
    SELECT id, now(), 'transition', 'queued', 'running', %(actor)s, '' FROM claimed
)
SELECT lease_epoch, agent, input, during_freeze, budget, retry_grant_seq, retry_grant_after FROM claimed
"""


def claim(run_id, owner):
    """Take a queued run with a fresh lease, in one statement (compare and set on the status,
    so two workers never both win); None if it is not queued."""
    with connection.cursor() as cursor:
        cursor.execute(
            CLAIM_SQL,
            {"run": run_id, "owner": owner, "lease": settings.RUN_LEASE_SECONDS,
             "actor": Actor.worker(owner).label},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    live.changed(run_id)
    epoch, agent, input, during_freeze, budget, grant_seq, grant_after = row
    # Django has psycopg hand jsonb over as text.
    return Lease(run_id=run_id, owner=owner, epoch=epoch, agent=agent, input=json.loads(input),
                 during_freeze=during_freeze, budget=json.loads(budget),
                 retry_grant=None if grant_seq is None else (grant_seq, grant_after))


def extend_lease(lease):
    """The heartbeat: False once the lease is no longer this worker's (it was fenced)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE runs_run SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE id = %s AND status = 'running' AND lease_epoch = %s",
            [settings.RUN_LEASE_SECONDS, lease.run_id, lease.epoch],
        )
        return cursor.rowcount == 1


# The move ------------------------------------------------------------------------------------

# The move itself, once its conditions were checked under the row's lock: the new state and its
# event row in one statement (it runs at the end of every advance).
MOVE_SQL = """
WITH moved AS (
    UPDATE runs_run
    SET status = %(to)s, lease_owner = '', lease_expires_at = NULL, requested = '',
        wait_kind = %(wait_kind)s, wait_ref = %(wait_ref)s, wake_at = %(wake_at)s,
        status_reason = %(shown_reason)s, parked_by = %(parked_by)s,
        finished_at = CASE WHEN %(finishes)s THEN now() ELSE finished_at END,
        output = CASE WHEN %(sets_output)s THEN %(output)s::jsonb ELSE output END,
        error = CASE WHEN %(sets_error)s THEN %(error)s::jsonb ELSE error END,
        updated_at = now()
    WHERE id = %(run)s
    RETURNING finished_at, updated_at
), event AS (
    -- A move to waiting records what the run waits for, as data (the run page draws waits).
    INSERT INTO runs_runevent (run_id, at, kind, from_status, to_status, actor, reason, details)
    SELECT %(run)s, now(), 'transition', %(before)s, %(to)s, %(actor)s, %(reason)s,
        CASE WHEN %(to)s = 'waiting'
            THEN jsonb_build_object('wait_kind', %(wait_kind)s::text, 'wait_ref', %(wait_ref)s::text) END
    FROM moved
), withdrawn AS (
    -- A run that left for good will never make the calls its pending requests are for.
    UPDATE tools_approval SET status = 'withdrawn', decided_by = %(actor)s, decided_at = now(),
        reason = %(withdrawn)s
    WHERE run_id = %(run)s AND status = 'pending' AND %(left_for_good)s
    RETURNING 1
)
SELECT finished_at, updated_at, (SELECT count(*) FROM withdrawn) FROM moved
"""
_NO_VALUE = object()


def move(run_id, to, *, actor, reason="", epoch=None, expect=None, waiting_for=None,
         lease_expired=False, wait=None, output=_NO_VALUE, error=_NO_VALUE, parked_by=""):
    """Move a run to status `to`, in one transaction with its event row; returns a Moved.

    Conditions, each checked under the row's lock (a journal write in flight finishes first,
    and any later one sees the new state); when one no longer holds, nothing moves:
    - epoch: only the lease holder of that epoch may move the run (it must be running);
    - expect: only from one of these statuses;
    - waiting_for: (kind, ref) only while the run waits for that (ref None: any of the kind);
    - lease_expired: only if the lease has expired by the database's clock.
    An illegal move raises IllegalTransition (the database would refuse it too). A run starts
    running only through claim. `output` and `error` are set with a finishing move;
    `parked_by` (a ParkedBy) with a move to needs_attention that a limit caused.
    """
    with transaction.atomic():
        run = _locked(run_id)
        before = run.status
        why_not = _unmet(run, epoch, expect, waiting_for, lease_expired)
        if why_not:
            return Moved(False, run, before, before, why_not=why_not)
        if _overrides(run, to):
            return Moved(False, run, before, before, why_not=f"{run.requested} requested", pending=run.requested)
        if to not in TRANSITIONS[run.status] or to == S.RUNNING:
            raise IllegalTransition(f"a {run.get_status_display().lower()} run cannot become {to}")
        if to == S.WAITING:
            run.wait_kind, run.wait_ref, run.wake_at = wait.kind, wait.ref, wait.wake_at
            reason = reason or wait.reason
        else:
            run.wait_kind, run.wait_ref, run.wake_at = "", "", None
        run.status, run.lease_owner, run.lease_expires_at, run.requested = to, "", None, Requested.NOTHING
        # Text for people may quote what a tool or agent said, NUL characters included.
        reason = visible(reason)
        if error is not _NO_VALUE:
            error = visible(error)
        run.status_reason = reason if to in EXPLAINED else ""
        if output is not _NO_VALUE:
            run.output = output
        if error is not _NO_VALUE:
            run.error = error
        with connection.cursor() as cursor:
            cursor.execute(MOVE_SQL, {
                "run": run.id, "to": to, "before": before, "actor": actor.label, "reason": reason,
                "wait_kind": run.wait_kind, "wait_ref": run.wait_ref, "wake_at": run.wake_at,
                "shown_reason": run.status_reason, "finishes": to in FINISHED,
                "parked_by": parked_by if to == S.NEEDS_ATTENTION else "",
                "sets_output": output is not _NO_VALUE, "output": _json(output),
                "sets_error": error is not _NO_VALUE, "error": _json(error),
                "left_for_good": to in LEFT_FOR_GOOD,
                "withdrawn": f"withdrawn: the run was {RunStatus(to).label.lower()}",
            })
            run.finished_at, run.updated_at, withdrawn = cursor.fetchone()
        if withdrawn:
            live.chrome_changed()  # the approvals badge counts them no more
        _after_commit(run, before)
    return Moved(True, run, before, to)


# The row a move locks, with what a move reads of it (the other fields load when asked for).
LOCK_SQL = """
SELECT id, status, requested, lease_epoch, wait_kind, wait_ref, parent_id FROM runs_run
WHERE id = %s FOR UPDATE
"""


def _locked(run_id):
    for run in Run.objects.raw(LOCK_SQL, [run_id]):
        return run
    raise Run.DoesNotExist(f"there is no run {run_id}")


def _json(value):
    return None if value is _NO_VALUE or value is None else json.dumps(value)


def end_compensation(original_id, rollback_id):
    """The rollback run ended: the original run is compensated, or compensation_failed with
    what needs a person. Harmless when the original has moved on already."""
    rollback = Run.objects.only("status", "output", "error").get(id=rollback_id)
    outcome = rollback.output or {}
    actor = Actor.run(rollback_id)
    if rollback.status == S.SUCCEEDED and not outcome.get("failed"):
        undone = len(outcome.get("compensated", []))
        return move(original_id, S.COMPENSATED, actor=actor, expect={S.COMPENSATING},
                    reason=f"rollback {rollback_id} undid {undone} step(s)")
    if rollback.status == S.SUCCEEDED:
        failed = outcome["failed"]
        where = "" if failed["run_id"] == str(original_id) else f" of child run {failed['run_id']}"
        why = (f"the compensation of step {failed['seq']}{where} ({failed['compensation']}) failed: "
               f"{outcome.get('error', '')}; {len(outcome.get('not_attempted', []))} step(s) not attempted")
    else:
        why = f"rollback {rollback_id} ended {rollback.status}: {(rollback.error or {}).get('message', '')}".rstrip(": ")
    return move(original_id, S.COMPENSATION_FAILED, actor=actor, expect={S.COMPENSATING}, reason=why)


# A run that moves here will never make the calls its pending approval requests are for:
# MOVE_SQL withdraws them in the same statement (the inbox no longer offers them, and a
# decision on one is refused).
LEFT_FOR_GOOD = FINISHED | {S.COMPENSATING}


def _overrides(run, to):
    """Whether an operator's pending request must be honoured instead of this move: a pause or
    a cancel over going back to the queue or waiting; a cancel over pausing or needing
    attention. A run that finishes anyway (succeeds, fails) needs neither."""
    if run.status != S.RUNNING or not run.requested:
        return False
    if to in (S.QUEUED, S.WAITING):
        return True
    return run.requested == Requested.CANCEL and to in (S.PAUSED, S.NEEDS_ATTENTION)


def _unmet(run, epoch, expect, waiting_for, lease_expired):
    if epoch is not None and (run.lease_epoch != epoch or run.status != S.RUNNING):
        return "fenced: another worker holds the run"
    if expect is not None and run.status not in expect:
        return f"it is {run.status}"
    if waiting_for is not None:
        kind, ref = waiting_for
        if run.status != S.WAITING or run.wait_kind != kind or (ref is not None and run.wait_ref != str(ref)):
            return f"it does not wait for {kind} {ref or ''}".rstrip()
    if lease_expired and not Run.objects.filter(id=run.id, lease_expires_at__lt=Now()).exists():
        return "its lease has not expired"
    return ""


def _after_commit(run, before):
    """The dispatcher: what a committed move sets off. Each step is registered to run after the
    commit; if the process dies first, the sweeper finds the run (runs.sweeper)."""
    live.changed(run.id)
    if run.status == S.QUEUED and before != S.QUEUED:
        queue.enqueue_advance(run.id)
    if run.status == S.WAITING and run.wait_kind in TIMED:
        queue.schedule_wake(run.id, run.wake_at)
    if run.status in FINISHED and run.rollback_of_id:
        rollback_id, original_id = run.id, run.rollback_of_id
        transaction.on_commit(lambda: end_compensation(original_id, rollback_id), robust=True)
    if run.status in FINISHED and run.parent_id:
        parent_id, child_id = run.parent_id, run.id
        # robust: the child's move has committed; a failed wake is the sweeper's to find.
        transaction.on_commit(lambda: wake(
            parent_id, WaitKind.CHILD, child_id, actor=Actor.run(child_id),
            reason=f"child run {child_id} {run.status}",
        ), robust=True)


# Waiting and waking ----------------------------------------------------------------------------


def suspend(lease, wait, *, agent):
    """The worker's run waits for `wait`, or goes straight back to the queue if what it waits
    for has happened already (nobody would wake it otherwise). Fenced by the lease."""
    actor = Actor.worker(lease.owner)
    with transaction.atomic():
        if waits.is_over(wait, agent):
            over = f"{wait.kind} {wait.ref}" if wait.ref else wait.kind
            return move(lease.run_id, S.QUEUED, actor=actor, epoch=lease.epoch, reason=f"no wait: {over} is over")
        return move(lease.run_id, S.WAITING, actor=actor, epoch=lease.epoch, wait=wait)


def wake(run_id, kind, ref=None, *, actor, reason):
    """The one move from waiting to queued: only if the run still waits for this kind of event
    (and this reference). A wake that finds nothing to do is harmless."""
    return move(run_id, S.QUEUED, actor=actor, reason=reason, waiting_for=(kind, ref))


# The waits that end at a time (Run.wake_at), each woken by a scheduled job.
TIMED = {WaitKind.SLEEP: "sleep over", WaitKind.RETRY: "time to try again"}


def wake_sleeper(run_id):
    """For the scheduled job of a timed wait (a sleep, a retry's backoff): wake the run if its
    time has come; a job that came early (the scheduler's clock is not the database's)
    schedules another."""
    run = (Run.objects.filter(status=S.WAITING, wait_kind__in=TIMED, id=run_id)
           .only("wake_at", "wait_kind", "wait_ref").first())
    if run is None:
        return Moved(False, why_not="it does not sleep")
    if run.wake_at > timezone.now():
        with transaction.atomic():
            queue.schedule_wake(run_id, run.wake_at)
        return Moved(False, run, why_not="early")
    return wake(run_id, run.wait_kind, run.wait_ref, actor=SCHEDULER, reason=TIMED[run.wait_kind])


def wake_due(kind, *, actor, reason):
    """Wake every run that still waits for an event of this kind that has happened (the
    sweeper's pass, a lifted freeze). Returns how many moved."""
    return sum(wake(run_id, kind, ref, actor=actor, reason=reason).done for run_id, ref in waits.due(kind))


# What operators ask --------------------------------------------------------------------------


def request_stop(run_id, request, *, actor, reason=""):
    """Pause or cancel: a running run is asked, and stops at its next step boundary (the
    journal's write statement reports the request); any other run moves at once."""
    to = S.PAUSED if request == Requested.PAUSE else S.CANCELLED
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.status != S.RUNNING:
            return move(run_id, to, actor=actor, reason=reason or f"{to} by {actor.label}")
        if run.requested != Requested.CANCEL:  # a cancel is never weakened to a pause
            run.requested = request
            run.save(update_fields=["requested", "updated_at"])
        RunEvent.objects.create(run=run, kind=RunEvent.Kind.REQUEST, actor=actor.label, reason=reason,
                                details={"requested": request})
        live.changed(run.id)
        return Moved(False, run, S.RUNNING, S.RUNNING, why_not=f"{request} requested", pending=run.requested)


def honour_request(run_id, *, actor, epoch=None, lease_expired=False, about_to=""):
    """Stop a running run as an operator asked (the pause or cancel pending now, read under the
    run's lock, so a cancel that came after a pause is the one honoured)."""
    with transaction.atomic():
        requested = _locked(run_id).requested
        if not requested:
            return Moved(False, why_not="no pause or cancel is pending")
        to = S.CANCELLED if requested == Requested.CANCEL else S.PAUSED
        reason = f"{to} by an operator's request" + (f" (the run was about to {about_to})" if about_to else "")
        return move(run_id, to, actor=actor, reason=reason, epoch=epoch, lease_expired=lease_expired)


# Creating a run: the one insert, for a start and for a fork -----------------------------------


def _insert_queued(started_by, *, reason="", details=None, **fields):
    """Insert a queued run and its `created` event, in the caller's transaction; the job that
    advances it, and the live pages' news, follow the commit."""
    run = Run.objects.create(started_by=started_by.label, **fields)
    RunEvent.objects.create(run=run, kind=RunEvent.Kind.CREATED, to_status=S.QUEUED,
                            actor=started_by.label, reason=reason, details=details)
    queue.enqueue_advance(run.id)
    live.changed(run.id)
    return run


def start_fork(origin, seq, *, started_by, reason="", details=None):
    """A queued run of `origin`'s agent with its input, forked at step `seq`. Call it inside
    the transaction that copies the origin's journal into it (runs.services.fork_run): a worker
    is asked to advance it only after that commits. Raises UnknownAgent or InvalidInput when the
    agent no longer exists or no longer accepts the origin's input."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("start_fork must run in the transaction that copies the journal")
    agent = get_agent(origin.agent)
    data = agent.dump_input(agent.parse_input(origin.input))
    return _insert_queued(started_by, agent=origin.agent, input=data, forked_from_id=origin.id,
                          forked_at_seq=seq, reason=reason, details=details, budget=origin.budget)
