"""Fault proof (issue 11): the whole stack under `serve`, against private Redis and Postgres,
while faults are injected for real; then count.

    python manage.py faults [--runs 20] [--redis-outage 30] [--postgres-down 10] [--lease 5]

Starts a Postgres cluster of its own (initdb and pg_ctl, in a temporary folder, on a free port)
and a redis-server of its own, migrates the cluster's database, and starts `manage.py serve`
(the web server, two workers, the sweeper) against them. Then, one phase at a time, it starts
RUNS runs of the chaos agent (tools.demo.proving) and, while they are in flight:

- stops Redis for --redis-outage seconds, then starts it again (empty: the jobs are lost);
- stops Postgres (pg_ctl stop -m fast) for --postgres-down seconds, then starts it again;
- SIGKILLs a worker, then the sweeper, then the web server, each in a phase of its own; serve
  must start each again;

and waits until every run of the phase settled. Last, it starts a poison run (the poison agent,
whose tool SIGKILLs its worker every time), which must end in needs_attention after
RUN_LOST_LEASES_LIMIT lost leases, its tool called no more than that. Needs the demo (DEMO=1).
The shared Postgres and Redis are never touched. Prints, as its last line:

    faults: runs=N lost=L duplicate_effects=D settled_after_outage_s=S stack_restarts=R poison_loops=P

runs: the chaos runs and the poison run; lost: as `manage.py chaos` counts them (a run that
never settled, ended otherwise than succeeded or needs_attention, or whose journal misses an
effect the ledger shows); duplicate_effects: keys that took effect twice in the ledger;
settled_after_outage_s: the worst time, over the Redis and the Postgres outage, from the end of
the outage until every run of its phase settled; stack_restarts: the children serve started
again; poison_loops: poison runs not parked in needs_attention, or whose tool was called more
than RUN_LOST_LEASES_LIMIT times. Exits 1 when L, D or P is above zero, or a killed child was
not started again.
"""

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections, connection

from runs import queue
from runs.actors import Actor
from runs.management.commands.chaos import compare_with_ledger
from runs.models import Run, RunStatus
from runs.moves import SETTLED, start_run
from runs.processes import POSTGRES_BIN, PrivatePostgres, PrivateRedis, children, free_port, project_env, wait_for_port
from tools.demo import require_demo

ACTOR = Actor.system("faults")
RESTARTED = "starting it again in"  # what serve says when a child died and will be restarted


class Command(BaseCommand):
    help = "Inject Redis and Postgres outages, kills and a poison run under serve; count lost runs and duplicate effects."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=20, help="chaos runs in flight at each fault")
        parser.add_argument("--redis-outage", type=float, default=30, metavar="SECONDS")
        parser.add_argument("--postgres-down", type=float, default=10, metavar="SECONDS")
        parser.add_argument("--lease", type=int, default=5, help="lease seconds for the workers")
        parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for a phase's runs to settle")

    def handle(self, *args, runs, redis_outage, postgres_down, lease, timeout, **options):
        require_demo("faults")
        if runs < 1 or redis_outage <= 0 or postgres_down <= 0 or lease < 1:
            raise CommandError("--runs and --lease must be at least 1, the outages above 0 s")
        self.timeout = timeout
        self.log_dir = Path(tempfile.mkdtemp(prefix="agentops-faults-"))
        self.postgres = PrivatePostgres()
        self.redis = PrivateRedis()
        self.serve = None
        try:
            self.set_up(lease)
            return self.prove(runs, redis_outage, postgres_down)
        finally:
            if self.serve is not None and self.serve.poll() is None:
                self.serve.send_signal(signal.SIGINT)
                try:
                    self.serve.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.serve.kill()
            connection.close()
            if self.redis.process is not None and self.redis.process.poll() is None:
                self.redis.stop()
            self.postgres.destroy()

    def say(self, message):
        self.stdout.write(f"faults: {message}")
        self.stdout.flush()

    def set_up(self, lease):
        """Private Postgres and Redis, this process pointed at them, the database migrated, and
        serve started against them."""
        self.postgres.create()
        self.redis.start()
        name = "agentops_faults"
        subprocess.run([str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.postgres.port),
                        "-U", "postgres", name], check=True)
        connection.close()
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(self.postgres.port), NAME=name,
                                        USER="postgres", PASSWORD="")
        settings.REDIS_URL = self.redis.url
        queue._redis = None  # the queue's connection follows REDIS_URL
        settings.RUN_LEASE_SECONDS = lease
        self.env = project_env(RUN_LEASE_SECONDS=str(lease), SWEEP_INTERVAL_SECONDS="1")
        subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "migrate", "-v", "0"],
                       env=self.env, check=True, cwd=settings.BASE_DIR)
        self.port = free_port()
        self.serve_log = self.log_dir / "serve.log"
        self.serve = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "serve", "--no-reload", "--port", str(self.port)],
            cwd=settings.BASE_DIR, env=self.env, stdout=open(self.serve_log, "w"), stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.serve, seconds=60)
        self.say(f"Postgres on port {self.postgres.port}, Redis on port {self.redis.port}, "
                 f"serve on port {self.port}; its log is {self.serve_log}")

    def prove(self, runs, redis_outage, postgres_down):
        run_ids = []
        unsettled = set()
        worst_outage = 0.0
        restarts_missing = []

        def phase(what, inject, outage):
            nonlocal worst_outage
            ids = [self.start_chaos(len(run_ids) + n) for n in range(runs)]
            run_ids.extend(ids)
            time.sleep(1)  # the workers are in the middle of the runs
            inject()
            over = time.monotonic()
            left = self.wait_settled(ids)
            settled_in = time.monotonic() - over
            unsettled.update(left)
            if outage:
                worst_outage = max(worst_outage, settled_in)
            self.say(f"{what}: {runs - len(left)} of {runs} runs settled {settled_in:.1f}s after it")

        def redis_down():
            self.redis.stop()
            time.sleep(redis_outage)
            self.redis.start()

        def postgres_restart():
            self.postgres.stop()
            time.sleep(postgres_down)
            self.postgres.start()

        def kill(child):
            def inject():
                pid = self.child_pid(child)
                signal_group(pid, signal.SIGKILL)
                if not self.replaced(child, pid):
                    restarts_missing.append(child)
            return inject

        phase(f"Redis stopped for {redis_outage:g}s", redis_down, outage=True)
        phase(f"Postgres stopped for {postgres_down:g}s", postgres_restart, outage=True)
        phase("a worker SIGKILLed", kill("worker"), outage=False)
        phase("the sweeper SIGKILLed", kill("sweeper"), outage=False)
        phase("the web server SIGKILLed", kill("web"), outage=False)
        poison_loops = self.poison()

        report = self.with_database(lambda: compare_with_ledger(run_ids, unsettled))
        for line in report["problems"]:
            self.say(f"problem: {line}")
        for child in restarts_missing:
            self.say(f"problem: serve did not start the {child} again")
        stack_restarts = self.serve_log.read_text().count(RESTARTED)
        self.stdout.write(
            f"faults: runs={len(run_ids) + 1} lost={report['lost']} duplicate_effects={report['duplicates']} "
            f"settled_after_outage_s={worst_outage:.1f} stack_restarts={stack_restarts} poison_loops={poison_loops}"
        )
        sys.stdout.flush()
        if report["lost"] or report["duplicates"] or poison_loops or restarts_missing:
            sys.exit(1)

    def start_chaos(self, account):
        return start_run("chaos", {"account": account}, started_by=ACTOR).id

    def with_database(self, query):
        """The query's answer; while Postgres is away (during its outage), None."""
        try:
            close_old_connections()
            return query()
        except DatabaseError:
            connection.close()
            return None

    def wait_settled(self, ids, timeout=None):
        """Wait until every run of `ids` settled; returns those that did not in time."""
        left = set(ids)
        deadline = time.monotonic() + (timeout or self.timeout)
        while left and time.monotonic() < deadline:
            done = self.with_database(
                lambda: set(Run.objects.filter(id__in=left, status__in=SETTLED).values_list("id", flat=True))
            )
            left -= done or set()
            time.sleep(0.2)
        return left

    def child_pid(self, child):
        """The pid of serve's child: "web" (daphne), "sweeper", or "worker" (the first)."""
        for pid in children(self.serve.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if child == "web" and any(b"daphne" in part for part in command):
                return pid
            if child in ("worker", "sweeper") and child.encode() in command:
                return pid
        raise CommandError(f"serve has no {child} running; its log is {self.serve_log}")

    def replaced(self, child, pid, seconds=60):
        """Whether serve started the child again (and the web server answers again)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.child_pid(child) != pid:
                    if child == "web":
                        wait_for_port(self.port, self.serve, seconds=max(1, deadline - time.monotonic()))
                    return True
            except CommandError:
                pass
            time.sleep(0.2)
        return False

    def poison(self):
        """A run whose tool kills its worker every time: parked, its tool called at most
        RUN_LOST_LEASES_LIMIT times. Returns 1 if it loops, else 0."""
        from tools.demo.models import LedgerCall

        account = 10**6
        run_id = start_run("poison", {"account": account}, started_by=ACTOR).id
        began = time.monotonic()
        left = self.wait_settled([run_id])
        run = Run.objects.get(id=run_id)
        calls = LedgerCall.objects.filter(key=f"poison:{account}").count()
        self.say(f"a poison run: {run.status} after {time.monotonic() - began:.1f}s, its tool called "
                 f"{calls} times ({run.status_reason or 'no reason'})")
        limit = settings.RUN_LOST_LEASES_LIMIT
        return int(bool(left) or run.status != RunStatus.NEEDS_ATTENTION or calls > limit)


def signal_group(pid, signum):
    """Signal a child of serve and what it forked (each child leads its own process group)."""
    import os

    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
