"""The sweeper's pass: what a lost message or a dead worker would otherwise leave stuck.

Every move re-checks its condition under the run's lock, so a heartbeat or a wake-up that lands
between the look and the move wins, and a second pass finds nothing more to do.
"""

import logging
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from runs import health, moves, queue
from runs.actors import SWEEPER
from runs.models import FINISHED, JournalEntry, Run, RunStatus, WaitKind
from runs.outages import Outage
from tools.approvals import expire_overdue

S = RunStatus
log = logging.getLogger(__name__)
redis_outage = Outage("Redis")
# A queued run this old with no job waiting for it in the queue is enqueued again: its job was
# lost (with Redis, or taken by a worker that failed before it claimed the run: a database that
# was away, a kill). The seconds leave time for a job on its way (enqueued after the commit, or
# just taken by a worker). A second job for a run is harmless: only one claim succeeds.
REQUEUE_AFTER_SECONDS = 3


# One sweeper query per kind of wait (runs.waits.due), and what the run's history says of it.
MISSED_WAKE_UPS = {
    WaitKind.SLEEP: "wake-up overdue",
    WaitKind.CHILD: "a child run finished",
    WaitKind.APPROVAL: "its approval request was decided",
    WaitKind.FREEZE: "the freeze was lifted",
    WaitKind.RETRY: "retry overdue",
}


def sweep():
    """One pass. Returns how many runs were handed back from dead workers.

    Each part runs on its own: one that fails (a database hiccup, a row it cannot read) is
    logged, and the others still run.
    """
    handed_back = _part(hand_back_expired_leases) or 0
    _part(expire_overdue)
    for kind, reason in MISSED_WAKE_UPS.items():
        _part(moves.wake_due, kind, actor=SWEEPER, reason=reason)
    _part(end_lost_compensations)
    _part(requeue_lost_jobs)
    _record_pass()
    return handed_back


def _last_pass_key():
    # Named after the database, as the run queue is: two checkouts never read each other's.
    return f"agentops:sweeper:last-pass:{connection.settings_dict['NAME']}"


def _record_pass():
    """A pass completed: a beat for `manage.py health sweeper` (it expires: is a sweeper alive
    on this host now?), and the time of the last pass, which stays (the workers page and
    /metrics say how late it is, however long the sweeper has been gone)."""
    try:
        health.beat("sweeper")
        queue.redis_connection().set(_last_pass_key(), timezone.now().isoformat())
    except redis.RedisError as error:
        redis_outage.failed(error)
    else:
        redis_outage.recovered()


def last_sweep_at():
    """When the sweeper's last pass ended (any sweeper of this database), or None if none has
    been recorded. A sweeper runs every SWEEP_INTERVAL_SECONDS; a much older pass means it
    stopped."""
    value = queue.redis_connection().get(_last_pass_key())
    return None if value is None else datetime.fromisoformat(value.decode()).astimezone(dt_timezone.utc)


class DatabaseAway(Exception):
    """The database went away during a pass: nothing more to sweep until it answers again."""


def _part(fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
    except DatabaseError as error:
        if database_away():
            # Not this part's fault: the rest of the pass would fail the same way. The sweeper
            # command waits for the database, saying so once (runs.outages).
            raise DatabaseAway(str(error).strip() or type(error).__name__) from error
        log.exception("the sweeper's %s failed; the next pass tries again", fn.__name__)
        return None
    except redis.RedisError as error:
        # Only the requeue reads Redis; the runs it would enqueue stay queued in Postgres.
        redis_outage.failed(error)
        return None
    return result


def database_away():
    """Whether this process's database connection is gone (the server stopped or restarted, the
    network cut), rather than a statement having failed on a live connection."""
    raw = connection.connection
    return raw is None or raw.closed or raw.broken


def hand_back_expired_leases():
    """Runs whose worker died go back to the queue; one whose workers keep dying without
    finishing a step (a poison run) goes to a person instead, after RUN_LOST_LEASES_LIMIT."""
    handed_back = 0
    expired = Run.objects.lease_expired().values_list(
        "id", "lease_epoch", "lease_owner", "lost_leases", "finished_steps_at_loss"
    )
    for run_id, epoch, owner, lost_before, finished_before in expired:
        finished = JournalEntry.objects.filter(run_id=run_id, phase=JournalEntry.Phase.OUTCOME).count()
        lost = lost_before + 1 if finished == finished_before else 1
        lapsed = dict(actor=SWEEPER, epoch=epoch, lease_expired=True)
        with transaction.atomic():
            if lost >= settings.RUN_LOST_LEASES_LIMIT:
                # A person's resume starts the count afresh.
                moved = moves.move(run_id, S.NEEDS_ATTENTION, reason=_poison_reason(run_id, lost, finished), **lapsed)
                lost = 0
            else:
                moved = moves.move(run_id, S.QUEUED, reason=f"the lease of worker {owner} expired", **lapsed)
            if moved.pending:
                moved = moves.honour_request(run_id, about_to="go back to the queue", **lapsed)
            if moved.done:
                Run.objects.filter(id=run_id).update(lost_leases=lost, finished_steps_at_loss=finished)
        handed_back += moved.done
    return handed_back


def _poison_reason(run_id, lost, finished):
    last = JournalEntry.objects.filter(run_id=run_id).order_by("-seq", "-attempt", "-id").first()
    if last is not None and last.phase == JournalEntry.Phase.INTENT:
        where = f"step {last.seq} ({last.effect or last.kind} {last.name!r}, recorded as started)"
    else:
        where = f"step {last.seq + 1 if last else 1}, before it recorded anything"
    return (
        f"its worker stopped {lost} times in a row without finishing a step, each time at {where}. "
        "The worker's log shows why (a crash, or memory). Resume to try again, or cancel the run."
    )


def end_lost_compensations():
    """Runs still compensating whose rollback run has finished: the end of the rollback (an
    after-commit step of its last move) was lost with its process."""
    finished = Run.objects.filter(rollback_of=OuterRef("pk"), status__in=FINISHED).order_by("-created_at")
    running = Run.objects.filter(rollback_of=OuterRef("pk")).exclude(status__in=FINISHED)
    lost = Run.objects.filter(status=S.COMPENSATING).filter(Exists(finished)).exclude(Exists(running))
    for run_id, rollback_id in lost.annotate(last=Subquery(finished.values("id")[:1])).values_list("id", "last"):
        moves.end_compensation(run_id, rollback_id)


def requeue_lost_jobs():
    """Queued runs whose job is gone start within a pass or two of Redis and Postgres being
    back, however the job was lost. Returns how many were enqueued again."""
    stale = timezone.now() - timedelta(seconds=REQUEUE_AFTER_SECONDS)
    queued = set(Run.objects.filter(status=S.QUEUED, updated_at__lt=stale).values_list("id", flat=True))
    if not queued:
        return 0
    lost = queued - {uuid.UUID(run_id) for run_id in queue.runs_with_waiting_jobs()}
    redis_outage.recovered()
    requeued = 0
    for run_id in lost:
        with transaction.atomic():
            if Run.objects.filter(id=run_id, status=S.QUEUED, updated_at__lt=stale).update(updated_at=timezone.now()):
                queue.enqueue_advance(run_id)
                requeued += 1
    if requeued:
        log.info("enqueued again %d queued run(s) whose job was lost", requeued)
    return requeued
