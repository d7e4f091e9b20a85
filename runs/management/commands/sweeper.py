"""The sweeper: hands back runs whose worker died, wakes overdue runs, re-enqueues lost jobs."""

import logging

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from runs.health import beat
from runs.sweeper import sweep
from runs.processes import stop_requested

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Every SWEEP_INTERVAL_SECONDS, look for expired leases and overdue wake-ups."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then stop")
        parser.add_argument("--interval", type=float, default=None)

    def handle(self, *args, once, interval, **options):
        interval = interval or settings.SWEEP_INTERVAL_SECONDS
        stopping = stop_requested()
        while True:
            close_old_connections()
            try:
                handed_back = sweep()
                # A pass completed: `manage.py health sweeper` checks these beats.
                beat("sweeper")
            except Exception:
                # Postgres or Redis may be away for a moment: try again at the next pass.
                log.exception("sweep failed")
                handed_back = 0
            if handed_back:
                self.stdout.write(f"handed back {handed_back} run(s) whose worker stopped")
            if once or stopping.wait(interval):
                return
