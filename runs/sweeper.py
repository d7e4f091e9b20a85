"""The sweeper's pass: what a lost message or a dead worker would otherwise leave stuck.

Every move re-checks its condition under the run's lock, so a heartbeat or a wake-up that lands
between the look and the move wins, and a second pass finds nothing more to do.
"""

import logging
from datetime import datetime, timedelta, timezone as dt_timezone

import redis

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone

from runs import moves, queue
from runs.actors import SWEEPER
from runs.models import FINISHED, Run, RunStatus, WaitKind
from tools.approvals import expire_overdue

S = RunStatus
log = logging.getLogger(__name__)
# A queued run untouched for this many leases is enqueued again: its job may have been lost
# (taken by a worker that died before it claimed the run, or lost with Redis). A second job for
# a run is harmless: only one claim succeeds.
REQUEUE_AFTER_LEASES = 10


# One sweeper query per kind of wait (runs.waits.due), and what the run's history says of it.
MISSED_WAKE_UPS = {
    WaitKind.SLEEP: "wake-up overdue",
    WaitKind.CHILD: "a child run finished",
    WaitKind.APPROVAL: "its approval request was decided",
    WaitKind.FREEZE: "the freeze was lifted",
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
    """Remember when this pass ended (in Redis: one key, no table to grow), for
    last_sweep_at."""
    try:
        queue.redis_connection().set(_last_pass_key(), timezone.now().isoformat())
    except redis.RedisError:
        log.warning("could not record the sweeper's pass in Redis; the next pass tries again")


def last_sweep_at():
    """When the sweeper's last pass ended (any sweeper of this database), or None if none has
    been recorded. A sweeper runs every SWEEP_INTERVAL_SECONDS; a much older pass means it
    stopped."""
    value = queue.redis_connection().get(_last_pass_key())
    return None if value is None else datetime.fromisoformat(value.decode()).astimezone(dt_timezone.utc)


def _part(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DatabaseError:
        log.exception("the sweeper's %s failed; the next pass tries again", fn.__name__)
        return None


def hand_back_expired_leases():
    handed_back = 0
    for run_id, epoch, owner in Run.objects.lease_expired().values_list("id", "lease_epoch", "lease_owner"):
        lapsed = dict(actor=SWEEPER, epoch=epoch, lease_expired=True)
        moved = moves.move(run_id, S.QUEUED, reason=f"the lease of worker {owner} expired", **lapsed)
        if moved.pending:
            moved = moves.honour_request(run_id, about_to="go back to the queue", **lapsed)
        handed_back += moved.done
    return handed_back


def end_lost_compensations():
    """Runs still compensating whose rollback run has finished: the end of the rollback (an
    after-commit step of its last move) was lost with its process."""
    finished = Run.objects.filter(rollback_of=OuterRef("pk"), status__in=FINISHED).order_by("-created_at")
    running = Run.objects.filter(rollback_of=OuterRef("pk")).exclude(status__in=FINISHED)
    lost = Run.objects.filter(status=S.COMPENSATING).filter(Exists(finished)).exclude(Exists(running))
    for run_id, rollback_id in lost.annotate(last=Subquery(finished.values("id")[:1])).values_list("id", "last"):
        moves.end_compensation(run_id, rollback_id)


def requeue_lost_jobs():
    stale = timezone.now() - timedelta(seconds=REQUEUE_AFTER_LEASES * settings.RUN_LEASE_SECONDS)
    for run_id in Run.objects.filter(status=S.QUEUED, updated_at__lt=stale).values_list("id", flat=True):
        with transaction.atomic():
            if Run.objects.filter(id=run_id, status=S.QUEUED, updated_at__lt=stale).update(updated_at=timezone.now()):
                queue.enqueue_advance(run_id)
