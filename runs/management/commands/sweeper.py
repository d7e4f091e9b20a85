"""The sweeper: hands back runs whose worker died, wakes overdue runs, re-enqueues lost jobs."""

import logging

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections, connection

from runs.outages import Outage
from runs.processes import stop_requested
from runs.sweeper import DatabaseAway, sweep

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Every SWEEP_INTERVAL_SECONDS, look for expired leases and overdue wake-ups."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then stop")
        parser.add_argument("--interval", type=float, default=None)

    def handle(self, *args, once, interval, **options):
        interval = interval or settings.SWEEP_INTERVAL_SECONDS
        stopping = stop_requested()
        postgres = Outage("Postgres")
        while True:
            close_old_connections()
            try:
                connection.ensure_connection()
            except DatabaseError as error:
                # Nothing to sweep without the database: wait for it, saying so once.
                delay = postgres.failed(error)
            else:
                postgres.recovered()
                delay = interval
                try:
                    handed_back = sweep()  # it beats for `manage.py health sweeper`
                except DatabaseAway as error:
                    connection.close()
                    delay = postgres.failed(error)
                    handed_back = 0
                except Exception:
                    log.exception("sweep failed; the next pass tries again")
                    handed_back = 0
                if handed_back:
                    self.stdout.write(f"handed back {handed_back} run(s) whose worker stopped")
            if once or stopping.wait(delay):
                return
