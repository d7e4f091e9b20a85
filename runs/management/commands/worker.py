"""An RQ worker for this database's run queue (see runs.queue.run_queue)."""

import socket
import time

from django.core.management.base import BaseCommand
from django.db import connections
from rq import Worker

from runs.queue import run_queue


class Command(BaseCommand):
    help = "Work on the run queue: advance runs, one job at a time, in forked work horses."

    def add_arguments(self, parser):
        parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
        parser.add_argument("--with-scheduler", action="store_true",
                            help="also move scheduled jobs (sleeps) to the queue when due")
        parser.add_argument("--name", default=None)

    def handle(self, *args, burst, with_scheduler, name, **options):
        queue = run_queue()
        # Each job runs in a forked process: it must not inherit an open database connection.
        connections.close_all()
        worker = Worker(
            [queue], connection=queue.connection,
            name=name or f"{socket.gethostname()}-{time.time_ns()}",
        )
        worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="WARNING")
