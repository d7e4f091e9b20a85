"""Speed of the journal: a step's cost against a raw insert, measured in one process.

    python manage.py bench_journal --steps 2000 [--rounds 3] [--throughput-runs 500] [--profile]

In its own database (agentops_bench, or DBNAME_bench for a DATABASE_URL naming another; made
afresh), it times, in this process (the agents are the demo's, in tools.demo.proving, so it
needs DEMO=1):
- a run of the agent bench_reads: N no-op read steps (one journal row and one commit each);
- a run of bench_writes: N no-op idempotent write steps (intent and outcome: two commits each);
- a baseline of N single-row autocommit INSERTs of the same payload into a plain table.
Each is repeated --rounds times and the median is kept. Then, for each worker mode (--fork,
then --no-fork), it starts two worker processes and measures runs started and finished per
second for --throughput-runs one-step runs (0 skips this), from the first enqueue until the
last run has finished:

    bench_journal: throughput: runs=500 workers=2 fork=on finished_per_s=F started_per_s=S wall_s=T

The last line is:

    bench_journal: read_step_us=R write_step_us=W raw_insert_us=B write_over_raw=X read_over_raw=Y
"""

import cProfile
import io
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Max
from rq import Worker

from runs.actors import Actor
from runs.engine import advance_run
from runs.moves import start_run
from runs.queue import run_queue
from runs.recorder import canonical_json, hash_json
from runs.models import FINISHED, Run, RunStatus
from runs.processes import kill_worker, project_env, start_manage, use_scratch_database
from tools.demo import require_demo

RAW_INSERT = """
INSERT INTO bench_raw_insert (
    run_id, seq, attempt, phase, kind, name, effect, args, args_hash, idempotency_key,
    status, result, error, actor, lease_epoch, created_at
) VALUES (%s::uuid, %s::integer, 1, 'outcome', 'tool', 'bench_read', 'read', %s::jsonb, %s, '',
          'succeeded', %s::jsonb, NULL, 'worker:bench', 1, now())
"""


class Command(BaseCommand):
    help = "Time journal steps against raw inserts, and runs per second on two workers."

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=2000)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--throughput-runs", type=int, default=500)
        parser.add_argument("--profile", action="store_true", help="print where a write step's time goes")

    def handle(self, *args, steps, rounds, throughput_runs, profile, **options):
        require_demo("bench_journal")
        if steps < 1 or rounds < 1 or throughput_runs < 0:
            raise CommandError("--steps and --rounds must be at least 1, --throughput-runs at least 0")
        use_scratch_database("bench")
        self.prepare_raw_table()

        raw, reads, writes = [], [], []
        for round_number in range(rounds):
            raw.append(self.time_raw_inserts(steps, round_number))
            reads.append(self.time_run("bench_reads", steps))
            writes.append(self.time_run("bench_writes", steps))
        raw_us, read_us, write_us = (statistics.median(values) for values in (raw, reads, writes))
        self.stdout.write(
            f"bench_journal: rounds={rounds} raw_insert_us={fmt(raw)} read_step_us={fmt(reads)} "
            f"write_step_us={fmt(writes)}"
        )
        if profile:
            self.profile_writes(steps)
        if throughput_runs:
            for fork in (True, False):
                self.throughput(throughput_runs, fork)
        self.stdout.write(
            f"bench_journal: read_step_us={read_us:.0f} write_step_us={write_us:.0f} "
            f"raw_insert_us={raw_us:.0f} write_over_raw={write_us / raw_us:.2f} "
            f"read_over_raw={read_us / raw_us:.2f}"
        )

    def prepare_raw_table(self):
        with connection.cursor() as cursor:
            # A plain, logged table shaped like the journal, without its triggers or run lock.
            cursor.execute("CREATE TABLE bench_raw_insert (LIKE runs_journalentry INCLUDING ALL)")

    def time_raw_inserts(self, steps, round_number):
        """The fastest plain insert: a prepared statement, as the journal's own writes are."""
        run = Run.objects.create(agent="bench_reads", input={"steps": steps}, started_by="bench")
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            began = time.perf_counter()
            for i in range(steps):
                args = {"i": i}
                cursor.execute(
                    RAW_INSERT, [run.id, i + 1 + round_number * steps, canonical_json(args),
                                 hash_json(canonical_json(args)), canonical_json({"i": i})],
                    prepare=True,
                )
            return (time.perf_counter() - began) / steps * 1e6

    def time_run(self, agent, steps):
        run = start_run(agent, {"steps": steps}, started_by=Actor.system("bench"))
        began = time.perf_counter()
        advance_run(run.id)
        elapsed = time.perf_counter() - began
        status = Run.objects.get(id=run.id).status
        if status != RunStatus.SUCCEEDED:
            raise CommandError(f"the {agent} run ended {status}")
        return elapsed / steps * 1e6

    def profile_writes(self, steps):
        run = start_run("bench_writes", {"steps": steps}, started_by=Actor.system("bench"))
        profiler = cProfile.Profile()
        profiler.runcall(advance_run, run.id)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        self.stdout.write(f"bench_journal: profile of {steps} write steps (by own time):")
        for line in out.getvalue().splitlines():
            if line.strip():
                self.stdout.write(f"  {line}")

    def throughput(self, count, fork):
        """`count` one-step runs on two worker processes, from the first enqueue to the last finish."""
        queue = run_queue()
        mode = "on" if fork else "off"
        log_dir = Path(tempfile.mkdtemp(prefix=f"agentops-bench-fork-{mode}-"))
        env = project_env()
        names = [f"bench-fork-{mode}-{n}-{time.time_ns()}" for n in range(2)]
        workers = [
            start_manage(["worker", "--fork" if fork else "--no-fork", "--name", name], env,
                         open(log_dir / f"{name}.log", "w"))
            for name in names
        ]
        try:
            deadline = time.monotonic() + 30
            while not set(names) <= {worker.name for worker in Worker.all(queue=queue)}:
                if time.monotonic() > deadline:
                    raise CommandError(f"the workers did not start; see {log_dir}")
                time.sleep(0.05)
            began_at = database_now()
            began = time.perf_counter()
            ids = [start_run("bench_one_step", {"steps": n}, started_by=Actor.system("bench")).id for n in range(count)]
            started = time.perf_counter() - began
            runs = Run.objects.filter(id__in=ids)
            while runs.exclude(status=RunStatus.SUCCEEDED).exists():
                if runs.filter(status__in=FINISHED - {RunStatus.SUCCEEDED}).exists():
                    raise CommandError(f"a throughput run did not succeed; see {log_dir}")
                if time.perf_counter() - began > 600:
                    raise CommandError("the throughput runs did not finish within 600 s")
                time.sleep(0.1)
            # The last run's own finish time (the database's clock), not when we looked.
            elapsed = (runs.aggregate(last=Max("finished_at"))["last"] - began_at).total_seconds()
        finally:
            for worker in workers:
                kill_worker(worker)
        self.stdout.write(
            f"bench_journal: throughput: runs={count} workers=2 fork={mode} "
            f"finished_per_s={count / elapsed:.1f} started_per_s={count / started:.0f} wall_s={elapsed:.2f}"
        )


def database_now():
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0]


def fmt(values):
    return "/".join(f"{value:.0f}" for value in values)
