"""An RQ worker for this database's run queue (see runs.queue.run_queue).

    python manage.py worker [--fork | --no-fork] [--with-scheduler] [--burst]

--no-fork (the default, setting WORKER_FORK): the jobs run one after another in this process,
which keeps its database and Redis connections (runs.workers.ReusingWorker). --fork: each job
runs in a forked work horse with connections of its own (RQ's Worker).
"""

import argparse
import logging
import socket
import time

import redis

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from runs import live
from runs.health import BeatingThread
from runs.outages import MAX_DELAY_SECONDS, Outage
from runs.processes import stop_requested
from runs.queue import reachable, run_queue
from runs.workers import WORKER_TTL_SECONDS, worker_class

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Work on the run queue: advance runs, one job at a time, in this process or in forked work horses."

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
        parser.add_argument("--with-scheduler", action="store_true",
                            help="also move scheduled jobs (sleeps) to the queue when due")
        parser.add_argument("--name", default=None)
        parser.add_argument(
            "--fork", action=argparse.BooleanOptionalAction, default=None,
            help="run each job in a forked work horse (default: the WORKER_FORK setting, "
                 f"now {'on' if settings.WORKER_FORK else 'off'})",
        )

    def handle(self, *args, burst, with_scheduler, name, fork, **options):
        """Work until stopped. When Redis goes away, RQ's worker quits: wait for Redis with
        backoff and start a new one (a Postgres outage fails the jobs instead, and the sweeper
        enqueues their runs again once it is back)."""
        fork = settings.WORKER_FORK if fork is None else fork
        name = name or f"{socket.gethostname()}-{time.time_ns()}"
        outage = Outage("Redis")
        restarts = 0
        # `manage.py health worker` checks these beats (docker-compose.yml's healthcheck).
        BeatingThread("worker").start()
        try:
            while True:
                # A name of its own for each RQ worker: after an outage, Redis may still hold
                # the last one's registration, and RQ refuses a second worker of that name.
                worker = self.work(fork, f"{name}-{restarts}" if restarts else name, burst, with_scheduler)
                restarts += 1
                # A stop signal (RQ notes when it came), or a burst's empty queue: done.
                if worker is not None and (burst or worker._shutdown_requested_date is not None):
                    return
                if worker is not None and reachable():
                    raise CommandError("the worker stopped on an error (see its log above)")
                # RQ's signal handlers ask Redis about the worker's state: while it is away,
                # a Ctrl-C or SIGTERM is simply a stop.
                stopping = stop_requested()
                if self.wait_for_redis(outage, stopping):
                    return
                outage.recovered()
        finally:
            # Without the fork, changes are published in the background: send the last ones.
            live.flush()
            connections.close_all()

    def work(self, fork, name, burst, with_scheduler):
        """One RQ worker until it stops; None if Redis failed under it."""
        queue = run_queue()
        # A forked process must not inherit an open database connection (nor must the
        # scheduler's, which RQ forks in both modes).
        connections.close_all()
        worker = worker_class(fork)([queue], connection=queue.connection, name=name,
                                    worker_ttl=WORKER_TTL_SECONDS)
        # RQ retries a lost Redis itself while it waits for a job, backing off up to a minute:
        # with our cap, a Redis that is back is noticed as soon as by the rest of us.
        worker.max_connection_wait_time = MAX_DELAY_SECONDS
        try:
            worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
        except redis.RedisError:
            return None  # RQ logged it; its teardown could not reach Redis either
        return worker

    def wait_for_redis(self, outage, stopping):
        """Until Redis answers (False) or a stop is asked for (True)."""
        outage.failed("RQ's worker lost its connection")
        while not reachable():
            if stopping.wait(outage.failed("not yet")):
                return True
        return stopping.is_set()
