"""Is a worker, or the sweeper, alive on this host? For docker-compose.yml's healthchecks.

    python manage.py health worker|sweeper [--max-age SECONDS] [--host HOST | --anywhere]

Healthy (exit 0) when a process of that kind on this host (the container, under compose) wrote
its heartbeat (runs.health) within --max-age seconds; unhealthy (exit 1) otherwise, with a line
that says what is missing.
"""

import socket
import sys

from django.core.management.base import BaseCommand

from runs.health import HEALTHY_WITHIN_SECONDS, KINDS, newest_beat_age


class Command(BaseCommand):
    help = "Exit 0 if a worker (or the sweeper) on this host beat recently, 1 if not."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=KINDS)
        parser.add_argument("--max-age", type=float, default=HEALTHY_WITHIN_SECONDS,
                            help=f"seconds since its last heartbeat (default {HEALTHY_WITHIN_SECONDS})")
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--host", default=None, help="the host to look at (default: this one)")
        where.add_argument("--anywhere", action="store_true", help="a process of that kind on any host")

    def handle(self, *args, kind, max_age, host, anywhere, **options):
        host = None if anywhere else (host or socket.gethostname())
        where = "any host" if host is None else host
        age = newest_beat_age(kind, host)
        if age is None or age > max_age:
            last = "none recorded" if age is None else f"the last {age:.0f}s ago"
            self.stderr.write(f"unhealthy: no {kind} heartbeat on {where} within {max_age:g}s ({last})")
            sys.exit(1)
        self.stdout.write(f"healthy: a {kind} on {where} beat {age:.1f}s ago")
