"""An RQ worker for this database's run queue (see runs.queue.run_queue).

    python manage.py worker [--fork | --no-fork] [--with-scheduler] [--burst]

--no-fork (the default, setting WORKER_FORK): the jobs run one after another in this process,
which keeps its database and Redis connections (runs.workers.ReusingWorker). --fork: each job
runs in a forked work horse with connections of its own (RQ's Worker).
"""

import argparse
import socket
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connections

from runs import live
from runs.health import BeatingThread
from runs.queue import run_queue
from runs.workers import worker_class


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
        fork = settings.WORKER_FORK if fork is None else fork
        queue = run_queue()
        # A forked process must not inherit an open database connection (nor must the
        # scheduler's, which RQ forks in both modes).
        connections.close_all()
        worker = worker_class(fork)(
            [queue], connection=queue.connection,
            name=name or f"{socket.gethostname()}-{time.time_ns()}",
        )
        # `manage.py health worker` checks these beats (docker-compose.yml's healthcheck).
        BeatingThread("worker").start()
        try:
            worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
        finally:
            # Without the fork, changes are published in the background: send the last ones.
            live.flush()
            connections.close_all()
