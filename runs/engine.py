"""The runtime around the journal: starting runs, the RQ jobs that advance them, leases,
the sweeper, and what operators do to runs (pause, resume, cancel, resolve a step in doubt).

A worker holds nothing that the journal does not. Its job only says "advance run R": it claims
the run with a lease (owner, expiry, and an epoch incremented at every claim), replays the agent
from the top against the journal (runs.journal), and ends by moving the run to its next state.
A heartbeat thread extends the lease while the agent runs. If the worker dies, the lease
expires and the sweeper hands the run back to the queue, where any worker takes it on.
"""

import logging
import os
import re
import socket
import threading
import time
from datetime import timedelta

import redis
import rq
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.utils import timezone

from runs import live
from runs.agents import InvalidInput, get_agent
from runs.journal import (
    CancelRequested, Context, Fenced, JournalUnavailable, Lease, NeedsAttention, PauseRequested,
    RunFails, ToolError, Wait, load_journal,
)
from runs.models import (
    FINISHED, IllegalTransition, JournalEntry, Requested, Run, RunEvent, RunStatus, transition,
)

S = RunStatus
log = logging.getLogger(__name__)

JOB_TIMEOUT_SECONDS = 3600
# A queued run untouched for this many leases is enqueued again: its job may have been lost
# (taken by a worker that died before it claimed the run, or lost with Redis). A second job for
# a run is harmless: only one claim succeeds.
REQUEUE_AFTER_LEASES = 10
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class InvalidIdempotencyKey(ValueError):
    pass


# Queues --------------------------------------------------------------------------------------


_redis = None


def redis_connection():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL)
    return _redis


def run_queue():
    """The RQ queue for runs of this database.

    Named after the database, so that workers only ever receive jobs for the database they
    write to: the test suite's and the benchmarks' databases never share a queue with `make up`.
    """
    return rq.Queue(f"runs.{connection.settings_dict['NAME']}", connection=redis_connection())


def enqueue_advance(run_id):
    """After the current transaction commits, ask a worker to advance the run."""
    run_id = str(run_id)
    transaction.on_commit(
        lambda: run_queue().enqueue(
            advance_run, run_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0, failure_ttl=86400
        )
    )


def schedule_wake(run_id, wake_at):
    run_id = str(run_id)
    # RQ's scheduler keeps whole seconds and rounds down: round up, so the job is not early.
    if wake_at.microsecond:
        wake_at = wake_at.replace(microsecond=0) + timedelta(seconds=1)
    transaction.on_commit(
        lambda: run_queue().enqueue_at(
            wake_at, wake_run, run_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0
        )
    )


def worker_id():
    return f"{socket.gethostname()}:{os.getpid()}"


# Starting runs ---------------------------------------------------------------------------------


def start_run(agent_name, input, *, started_by, idempotency_key=None, parent_id=None):
    """Create a queued run and enqueue it. The same idempotency key returns the same run.

    Raises UnknownAgent, InvalidInput or InvalidIdempotencyKey, each naming the problem, before
    anything is written.
    """
    agent = get_agent(agent_name)
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
            run = Run.objects.create(
                agent=agent_name, input=data, started_by=started_by,
                idempotency_key=idempotency_key, parent_id=parent_id,
            )
            RunEvent.objects.create(run=run, kind=RunEvent.Kind.CREATED, to_status=S.QUEUED, actor=started_by)
            enqueue_advance(run.id)
            live.changed(run.id)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # Another caller started the same key at the same moment.
        existing = _run_for_key(idempotency_key, agent_name, data)
        if existing is None:
            raise
        return existing
    return run


def _run_for_key(key, agent_name, data):
    run = Run.objects.filter(idempotency_key=key).first()
    if run is not None and (run.agent != agent_name or run.input != data):
        raise InvalidIdempotencyKey(
            f"idempotency key {key!r} already started run {run.id} of agent {run.agent!r} "
            "with a different input; use a new key for a different request"
        )
    return run


# The job: advance a run ------------------------------------------------------------------------

CLAIM_SQL = """
WITH claimed AS (
    UPDATE runs_run
    SET status = 'running', lease_owner = %(owner)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s),
        lease_epoch = lease_epoch + 1, started_at = COALESCE(started_at, now()), updated_at = now()
    WHERE id = %(run)s AND status = 'queued'
    RETURNING id, lease_epoch
), event AS (
    INSERT INTO runs_runevent (run_id, at, kind, from_status, to_status, actor, reason)
    SELECT id, now(), 'transition', 'queued', 'running', %(actor)s, '' FROM claimed
)
SELECT lease_epoch FROM claimed
"""


def claim(run_id, owner):
    """Take a queued run with a fresh lease, in one statement; None if it is not queued."""
    with connection.cursor() as cursor:
        cursor.execute(
            CLAIM_SQL,
            {"run": run_id, "owner": owner, "lease": settings.RUN_LEASE_SECONDS, "actor": f"worker:{owner}"},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    live.changed(run_id)
    return Lease(run_id=run_id, owner=owner, epoch=row[0])


class Heartbeat(threading.Thread):
    """Extends the lease while the agent runs, three times per lease, on its own connection."""

    def __init__(self, lease):
        super().__init__(daemon=True, name=f"heartbeat-{lease.run_id}")
        self.lease = lease
        self.stopped = threading.Event()

    def run(self):
        interval = settings.RUN_LEASE_SECONDS / 3
        try:
            while not self.stopped.wait(interval):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "UPDATE runs_run SET lease_expires_at = now() + make_interval(secs => %s)"
                            " WHERE id = %s AND status = 'running' AND lease_epoch = %s",
                            [settings.RUN_LEASE_SECONDS, self.lease.run_id, self.lease.epoch],
                        )
                        if cursor.rowcount == 0:
                            return  # fenced: the journal writes will find out too
                except DatabaseError:
                    # Try again at the next beat, on a new connection; two beats remain before
                    # the lease runs out.
                    log.warning("heartbeat of run %s failed", self.lease.run_id, exc_info=True)
                    connection.close()
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()


def advance_run(run_id):
    """The RQ job. Running it twice, or for a run that is not queued, is harmless."""
    try:
        lease = claim(run_id, worker_id())
        if lease is None:
            return "not claimable"
        with Heartbeat(lease):
            return execute(lease)
    finally:
        # A work horse publishes what it changed and closes its connections; a no-fork
        # worker keeps them for its next job (runs.workers).
        from runs.workers import end_of_job

        end_of_job()


def execute(lease):
    """Run the agent from the top against the journal, then move the run on. Returns its new status."""
    run = Run.objects.only("agent", "input").get(id=lease.run_id)
    ctx = Context(lease, load_journal(run.id), agent=run.agent)
    end = dict(epoch=lease.epoch, actor=f"worker:{lease.owner}")
    try:
        agent = get_agent(run.agent)
        value = agent.fn(ctx, agent.parse_input(run.input))
        output = agent.dump_output(value)
    except Wait as wait:
        moved = _wait(run.id, wait, end)
    except PauseRequested:
        moved = transition(run.id, S.PAUSED, reason="paused by an operator's request", **end)
    except CancelRequested:
        moved = transition(run.id, S.CANCELLED, reason="cancelled by an operator's request", **end)
    except NeedsAttention as attention:
        moved = transition(run.id, S.NEEDS_ATTENTION, reason=attention.reason, **end)
    except Fenced as fenced:
        log.warning("%s", fenced)
        return "fenced"
    except RunFails as failure:
        moved = transition(run.id, S.FAILED, error=failure.error, **end)
    except JournalUnavailable as error:
        # The run stays as it is; its lease expires and the sweeper hands it on.
        log.error("run %s stopped: %s", run.id, error)
        return "stopped"
    except Exception as error:
        expected = isinstance(error, (ToolError, InvalidInput))
        log.info("run %s failed: %s", run.id, error, exc_info=not expected)
        if isinstance(error, ToolError):
            failure = {"type": error.type, "message": error.message}
        else:
            failure = {"type": type(error).__name__, "message": str(error)}
        moved = transition(run.id, S.FAILED, error=failure, **end)
    else:
        moved = transition(run.id, S.SUCCEEDED, output=output, **end)
    return moved.status if moved else "fenced"


def _wait(run_id, wait, end):
    with transaction.atomic():
        if wait.child_id:
            # Lock the child first (the order its own finish takes), then look again: if it
            # finished meanwhile, nobody would wake us, so go straight back to the queue.
            child = Run.objects.select_for_update().only("status").get(id=wait.child_id)
            if child.is_finished:
                return transition(run_id, S.QUEUED, reason="child run finished", **end)
        if wait.approval_id:
            # The same for an approval decided (or expired) before we got here.
            from tools.models import Approval

            approval = Approval.objects.select_for_update().only("status").get(id=wait.approval_id)
            if approval.status != "pending":
                return transition(run_id, S.QUEUED, reason=f"approval {approval.status}", **end)
        moved = transition(run_id, S.WAITING, reason=wait.reason, wake_at=wait.wake_at, **end)
        if moved and moved.status == S.WAITING and wait.wake_at:
            schedule_wake(run_id, wait.wake_at)
    return moved


def wake_run(run_id):
    """The scheduled job of a sleep: back to the queue, then advance at once."""
    run = Run.objects.filter(id=run_id).only("status", "wake_at").first()
    if run and run.status == S.WAITING and run.wake_at:
        if run.wake_at > timezone.now():
            schedule_wake(run_id, run.wake_at)
            return "early"
        transition(run_id, S.QUEUED, expect={S.WAITING}, actor="system:scheduler", reason="sleep over")
    return advance_run(run_id)


# Settled: nothing more happens without a person.
SETTLED = FINISHED | {S.NEEDS_ATTENTION, S.PAUSED}


def wait_until_settled(run_id, timeout):
    """Poll until the run settles; the run as it then is. TimeoutError names where it stood."""
    deadline = time.monotonic() + timeout
    while True:
        run = Run.objects.get(id=run_id)
        if run.status in SETTLED:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is still {run.status} after {timeout:g}s")
        time.sleep(0.1)


# The sweeper ---------------------------------------------------------------------------------


def sweep():
    """One pass: hand back runs whose worker died, wake overdue runs, re-enqueue lost jobs.

    Every move re-checks its condition under the run's lock, so a heartbeat that lands between
    the look and the move keeps its run.
    """
    handed_back = 0
    for run_id, epoch, owner in Run.objects.lease_expired().values_list("id", "lease_epoch", "lease_owner"):
        if transition(run_id, S.QUEUED, epoch=epoch, lease_expired=True, actor="system:sweeper",
                      reason=f"the lease of worker {owner} expired"):
            handed_back += 1
    for run_id in Run.objects.overdue().values_list("id", flat=True):
        transition(run_id, S.QUEUED, expect={S.WAITING}, actor="system:sweeper", reason="wake-up overdue")
    # A parent whose child finished but which still waits (its wake-up was lost).
    orphaned = Run.objects.filter(status=S.WAITING, wake_at__isnull=True, children__status__in=FINISHED)
    for run_id in orphaned.values_list("id", flat=True).distinct():
        transition(run_id, S.QUEUED, expect={S.WAITING}, actor="system:sweeper", reason="a child run finished")
    # Runs that wait for a freeze no longer covering them (the lift's wake-up was missed).
    from tools.approvals import expire_overdue, wake_decided
    from tools.freeze import wake_unfrozen

    wake_unfrozen(actor="system:sweeper")
    expire_overdue()
    wake_decided()
    stale = timezone.now() - timedelta(seconds=REQUEUE_AFTER_LEASES * settings.RUN_LEASE_SECONDS)
    for run_id in Run.objects.filter(status=S.QUEUED, updated_at__lt=stale).values_list("id", flat=True):
        with transaction.atomic():
            if Run.objects.filter(id=run_id, status=S.QUEUED, updated_at__lt=stale).update(updated_at=timezone.now()):
                enqueue_advance(run_id)
    return handed_back


# What operators do ---------------------------------------------------------------------------


def request_pause(run_id, *, actor, reason=""):
    return _request(run_id, Requested.PAUSE, S.PAUSED, actor=actor, reason=reason)


def request_cancel(run_id, *, actor, reason=""):
    return _request(run_id, Requested.CANCEL, S.CANCELLED, actor=actor, reason=reason)


def _request(run_id, request, to, *, actor, reason):
    """A running run is asked, and stops at its next step boundary; any other moves at once."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.status == S.RUNNING:
            if run.requested != Requested.CANCEL:
                run.requested = request
                run.save(update_fields=["requested", "updated_at"])
            RunEvent.objects.create(run=run, kind=RunEvent.Kind.REQUEST, actor=actor, reason=reason,
                                    details={"requested": request})
            live.changed(run.id)
            return run
        return transition(run_id, to, actor=actor, reason=reason or f"{to} by {actor}")


def resume(run_id, *, actor, reason=""):
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.status != S.PAUSED:
            raise IllegalTransition(f"only a paused run can be resumed; this one is {run.get_status_display().lower()}")
        return transition(run_id, S.QUEUED, actor=actor, reason=reason or "resumed")


class Decision:
    HAPPENED = "happened"
    RUN_AGAIN = "run_again"
    FAIL = "fail"
    ALL = (HAPPENED, RUN_AGAIN, FAIL)


def resolve_step(run_id, seq, decision, *, actor, result=None, reason=""):
    """An operator's decision on a step in doubt; the run then goes on.

    happened: the call took effect; `result` is what the agent receives.
    run_again: it did not; the step runs again with the same idempotency key.
    fail: the agent receives an error with the operator's reason.
    """
    if decision not in Decision.ALL:
        raise ValueError(f"decision must be one of {', '.join(Decision.ALL)}, not {decision!r}")
    if decision == Decision.FAIL and not reason.strip():
        raise ValueError("failing a step needs a reason: the agent receives it as the tool's error")
    if decision == Decision.RUN_AGAIN and not reason.strip():
        raise ValueError("running a step again needs a reason: say how you know it did not happen")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.status != S.NEEDS_ATTENTION:
            raise IllegalTransition(f"run {run_id} is {run.get_status_display().lower()}, not waiting for a decision")
        intent = in_doubt_step(run_id)
        if intent is None:
            raise ValueError(
                f"no step of run {run_id} is in doubt: {run.status_reason or 'it needs attention for another reason'}"
            )
        if intent.seq != seq:
            raise ValueError(f"step {seq} is not in doubt; step {intent.seq} is")
        status, outcome, error = {
            Decision.HAPPENED: (JournalEntry.Status.SUCCEEDED, result, None),
            Decision.RUN_AGAIN: (JournalEntry.Status.ABANDONED, None, None),
            Decision.FAIL: (JournalEntry.Status.FAILED, None,
                            {"type": "failed_by_operator", "message": f"failed by operator: {reason}"}),
        }[decision]
        JournalEntry.objects.create(
            run_id=run_id, seq=seq, attempt=intent.attempt, phase=JournalEntry.Phase.OUTCOME,
            kind=intent.kind, name=intent.name, effect=intent.effect, args_hash=intent.args_hash,
            idempotency_key=intent.idempotency_key, status=status, result=outcome, error=error,
            actor=actor,
        )
        RunEvent.objects.create(run=run, kind=RunEvent.Kind.RESOLUTION, actor=actor, reason=reason,
                                details={"seq": seq, "decision": decision})
        return transition(run_id, S.QUEUED, actor=actor, reason=f"step {seq} resolved: {decision}")


def in_doubt_step(run_id):
    """The intent row of the step whose outcome is unknown, or None."""
    last = JournalEntry.objects.filter(run_id=run_id).order_by("-seq", "-attempt", "-id").first()
    if last is not None and last.phase == JournalEntry.Phase.INTENT and last.kind == JournalEntry.Kind.TOOL:
        return last
    return None
