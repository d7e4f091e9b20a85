"""The run queue in Redis: a doorbell that says "advance run R", never the truth.

Jobs name their function by path (the worker imports it), so that what enqueues a run need not
import the engine that advances it. Every enqueue happens after the current transaction
commits: a worker never receives a job for a change it cannot see yet.
"""

import logging
import uuid
from datetime import timedelta

import redis
import rq
from django.conf import settings
from django.db import connection, transaction

ADVANCE_JOB = "runs.engine.advance_run"
WAKE_JOB = "runs.engine.wake_run"
JOB_TIMEOUT_SECONDS = 3600
ADVANCE_JOB_PREFIX = "advance-"

log = logging.getLogger(__name__)

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
    """After the current transaction commits, ask a worker to advance the run.

    If Redis cannot take the job, the run is queued all the same (Postgres is the truth): the
    sweeper finds queued runs that no job in the queue names and enqueues them again
    (runs.sweeper.requeue_lost_jobs). So a failed enqueue is logged, not raised.
    """
    transaction.on_commit(lambda: ring(run_id))


def ring(run_id):
    """Enqueue an advance of the run now; False if Redis could not take it."""
    run_id = str(run_id)
    try:
        run_queue().enqueue(
            ADVANCE_JOB, run_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0, failure_ttl=86400,
            # The run's id in the job's id lets the sweeper see, from the queue alone, which
            # runs have a job waiting; the rest makes each job its own.
            job_id=f"{ADVANCE_JOB_PREFIX}{run_id}-{uuid.uuid4().hex[:8]}",
        )
    except redis.RedisError as error:
        log.warning("run %s is queued, but Redis did not take its job (%s): the sweeper enqueues it "
                    "again once Redis answers", run_id, error)
        return False
    return True


def reachable():
    """Whether Redis answers now."""
    try:
        return bool(redis_connection().ping())
    except redis.RedisError:
        return False


def runs_with_waiting_jobs():
    """The ids of the runs that an advance job waiting in the queue names (one read of the
    queue's list)."""
    waiting = set()
    for job_id in run_queue().get_job_ids():
        if job_id.startswith(ADVANCE_JOB_PREFIX):
            waiting.add(job_id[len(ADVANCE_JOB_PREFIX):-9])
    return waiting


def schedule_wake(run_id, wake_at):
    """After the current transaction commits, have the scheduler wake the run at wake_at."""
    run_id = str(run_id)
    # RQ's scheduler keeps whole seconds and rounds down: round up, so the job is not early.
    if wake_at.microsecond:
        wake_at = wake_at.replace(microsecond=0) + timedelta(seconds=1)
    transaction.on_commit(
        lambda: run_queue().enqueue_at(
            wake_at, WAKE_JOB, run_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0
        )
    )
