"""How a worker process runs its jobs: in a forked work horse each, or one after another in itself.

With the fork (`manage.py worker --fork`, RQ's `Worker`), every job runs in a new child process
that opens its own database and Redis connections, publishes its live changes and closes
everything before it exits. Without it (`--no-fork`, the default: setting WORKER_FORK), the
worker process runs the jobs itself (RQ's `SimpleWorker`): it keeps its connections from one
job to the next, and its live publisher thread sends changes in the background.

Crash isolation does not come from the fork. What protects the journal is the lease: a worker
that dies (the process that runs the job, in either mode) stops heartbeating, its lease expires,
the sweeper hands the run on, and the epoch fences any write it might still try.
"""

import logging
import time

from django.db import DatabaseError, close_old_connections, connection, connections
from psycopg.pq import TransactionStatus
from rq import SimpleWorker, Worker

from runs import live
from runs.outages import Outage

log = logging.getLogger(__name__)

# How long an idle worker may stay silent in Redis: RQ heartbeats when its wait for a job times
# out, every WORKER_TTL_SECONDS - 15 s (here 5 s). RQ's default (420 s) would leave a killed
# worker looking alive on the workers page (runs.fleet) for seven minutes.
WORKER_TTL_SECONDS = 20

# True in a no-fork worker, whose process outlives each job: the job then leaves its
# connections open for the next one. False everywhere else (a forked work horse, which exits
# after the job; a command or test that calls advance_run itself).
_process_outlives_jobs = False
# True once RQ's cold shutdown began in this process (a second Ctrl-C or SIGTERM): the
# SystemExit it raises inside a job is the worker stopping, not the agent failing.
_stopping = False


def stopping():
    return _stopping


def end_of_job():
    """What runs.engine.advance_run does when its job ends, however it ends."""
    if _process_outlives_jobs:
        # ReusingWorker tidies up between jobs; the publisher thread lives on, and sends the
        # job's changes now rather than at the end of its batch.
        live.send_soon()
        return
    # The work horse exits when the job ends: publish what it changed, and leave no connection
    # behind.
    live.flush()
    connections.close_all()


def wait_for_database():
    """Before a job: until the database answers. A job taken while Postgres is away would fail
    at its first query (a traceback each), and its run would wait for the sweeper to enqueue it
    again; held here, it runs as soon as Postgres is back. Said once per outage. The check is
    the health check Django makes anyway at a job's first query (CONN_HEALTH_CHECKS)."""
    outage = Outage("Postgres")
    while True:
        close_old_connections()
        try:
            connection.close_if_health_check_failed()
            connection.ensure_connection()
        except DatabaseError as error:
            connection.close()
            time.sleep(outage.failed(error))
            continue
        outage.recovered()
        return


class WaitsForDatabase:
    def perform_job(self, job, queue):
        wait_for_database()
        return super().perform_job(job, queue)


class ForkingWorker(WaitsForDatabase, Worker):
    """RQ's Worker: a work horse per job, which waits for the database before the job."""


class ReusingWorker(WaitsForDatabase, SimpleWorker):
    """Runs each job in this process and keeps the database connections between jobs.

    Before and after every job, Django's close_old_connections() closes a connection that is
    broken, past CONN_MAX_AGE, or left with autocommit off, as it does around every web
    request; after a job, so is one on which the server still holds a transaction open. A job
    that raised (JobTimeoutException included: RQ's timeout is a SIGALRM that raises inside the
    job, here as in a work horse; it does not stop the worker) may have been interrupted in the
    middle of a statement, so after a failed job every connection is closed.
    """

    def execute_job(self, job, queue):
        global _process_outlives_jobs
        _process_outlives_jobs = True
        super().execute_job(job, queue)

    def request_force_stop(self, signum, frame):
        global _stopping
        try:
            super().request_force_stop(signum, frame)  # raises SystemExit, unless it ignores the signal
        except SystemExit:
            _stopping = True
            raise

    def perform_job(self, job, queue):
        result = None
        try:
            result = super().perform_job(job, queue)  # None or True when done, False when it raised
        finally:
            tidy_connections(failed=result is False)
        return result


def tidy_connections(failed):
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            # Left inside atomic() (an exception landed in atomic's own exit): Django cannot
            # close such a connection and open a new one, so the wrapper is dropped whole.
            log.error("a job left database connection %r inside a transaction block; discarding it", conn.alias)
            if conn.connection is not None:
                conn.connection.close()
            del connections[conn.alias]
        elif failed or in_transaction(conn):
            conn.close()
    close_old_connections()


def in_transaction(conn):
    """Whether the server holds a transaction open on this connection outside atomic() (one a
    job began by hand, or one that failed): the next job's autocommit writes would land in it.
    libpq tracks the state, so asking costs no round trip."""
    raw = conn.connection
    return raw is not None and not raw.closed and raw.info.transaction_status != TransactionStatus.IDLE


def worker_class(fork):
    return ForkingWorker if fork else ReusingWorker
