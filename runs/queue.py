"""The run queue in Redis: a doorbell that says "advance run R", never the truth.

Jobs name their function by path (the worker imports it), so that what enqueues a run need not
import the engine that advances it. Every enqueue happens after the current transaction
commits: a worker never receives a job for a change it cannot see yet.
"""

from datetime import timedelta

import redis
import rq
from django.conf import settings
from django.db import connection, transaction

ADVANCE_JOB = "runs.engine.advance_run"
WAKE_JOB = "runs.engine.wake_run"
JOB_TIMEOUT_SECONDS = 3600

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
            ADVANCE_JOB, run_id, job_timeout=JOB_TIMEOUT_SECONDS, result_ttl=0, failure_ttl=86400
        )
    )


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
