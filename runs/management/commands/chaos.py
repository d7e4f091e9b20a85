"""Crash proof: run the chaos agent on real workers while SIGKILLing them, then count.

    python manage.py chaos --runs 40 --workers 2 --kill-every 1 [--fork | --no-fork]

Works in its own database (agentops_chaos, or DBNAME_chaos for a DATABASE_URL naming another;
made afresh each time), so the dashboard's data is never touched. Needs the demo (DEMO=1).
Starts W worker processes, starts N runs of the chaos agent (tools.demo.proving), and every
SECONDS kills a random worker together with the work horse it forked (with --fork; without it,
the worker process runs the job itself), then starts a replacement. The sweeper runs in this
process. When every run has settled, it checks each run against the ledger (the outside world)
and prints, as its last line:

    chaos: runs=N succeeded=S needs_attention=A lost=L duplicate_effects=D kills=K

lost: runs that never settled, ended otherwise than succeeded or needs_attention, or whose
journal misses a step that the ledger shows took effect. duplicate_effects: idempotency keys
(one per step) that took effect more than once. Exits 1 when L or D is above zero.
"""

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connection

from runs.actors import Actor
from runs.moves import SETTLED, start_run
from runs.sweeper import sweep
from runs.models import JournalEntry, Run, RunStatus
from runs.processes import kill_worker, project_env, start_manage, use_scratch_database
from tools.demo import require_demo


class Command(BaseCommand):
    help = "SIGKILL real workers while chaos runs execute; count lost runs and duplicate effects."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=40)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--kill-every", type=float, default=1.0, metavar="SECONDS")
        parser.add_argument("--lease", type=int, default=2, help="lease seconds for the workers")
        parser.add_argument("--timeout", type=float, default=290, help="seconds to wait for every run to settle")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument(
            "--fork", action=argparse.BooleanOptionalAction, default=None,
            help="workers run each job in a forked work horse (default: the WORKER_FORK setting)",
        )

    def handle(self, *args, runs, workers, kill_every, lease, timeout, seed, fork, **options):
        require_demo("chaos")
        if runs < 1 or workers < 1 or kill_every <= 0:
            raise CommandError("--runs and --workers must be at least 1, --kill-every above 0")
        chooser = random.Random(seed)
        fork = settings.WORKER_FORK if fork is None else fork
        database = use_scratch_database("chaos")
        settings.RUN_LEASE_SECONDS = lease
        env = project_env(RUN_LEASE_SECONDS=str(lease))
        log_dir = Path(tempfile.mkdtemp(prefix="agentops-chaos-"))
        self.stdout.write(
            f"chaos: database {database}, workers {'with' if fork else 'without'} the fork, worker logs in {log_dir}"
        )

        pool = []
        started = 0

        def start_worker():
            nonlocal started
            started += 1
            log = open(log_dir / f"worker-{started}.log", "w")
            pool.append(start_manage(["worker", "--fork" if fork else "--no-fork"], env, log))

        for _ in range(workers):
            start_worker()
        run_ids = [
            start_run("chaos", {"account": n}, started_by=Actor.system("chaos")).id for n in range(runs)
        ]
        kills = 0
        began = time.monotonic()
        next_kill = began + kill_every
        unsettled = set(run_ids)
        try:
            while unsettled and time.monotonic() - began < timeout:
                if time.monotonic() >= next_kill:
                    victim = chooser.choice(pool)
                    pool.remove(victim)
                    kill_worker(victim)
                    kills += 1
                    start_worker()
                    next_kill += kill_every
                close_old_connections()
                sweep()
                unsettled -= set(
                    Run.objects.filter(id__in=unsettled, status__in=SETTLED).values_list("id", flat=True)
                )
                time.sleep(0.2)
        finally:
            for process in pool:
                kill_worker(process)
        elapsed = time.monotonic() - began

        report = self.compare_with_ledger(run_ids, unsettled)
        self.stdout.write(
            f"chaos: settled in {elapsed:.1f}s; {report['reconciled']} in-doubt steps reconciled, "
            f"{report['rerun']} idempotent writes re-run after a crash"
        )
        for line in report["problems"]:
            self.stdout.write(f"chaos: problem: {line}")
        self.stdout.write(
            f"chaos: runs={runs} succeeded={report['succeeded']} "
            f"needs_attention={report['needs_attention']} lost={report['lost']} "
            f"duplicate_effects={report['duplicates']} kills={kills}"
        )
        sys.stdout.flush()
        if report["lost"] or report["duplicates"]:
            sys.exit(1)

    def compare_with_ledger(self, run_ids, unsettled):
        """Compare each run's journal with the ledger."""
        # Imported here, not at the top: the demo's models can be imported only when its app is
        # installed, and without it this command must still load to say so (require_demo).
        from tools.demo.models import LedgerCall
        from tools.demo.proving import CHAOS_STEPS, chaos_expected_total

        step_count = len(CHAOS_STEPS)
        problems = []
        lost = set(unsettled)
        for run_id in unsettled:
            problems.append(f"run {run_id} never settled")
        keys = {f"{run_id}:{seq}" for run_id in run_ids for seq in range(1, step_count + 1)}
        calls = list(LedgerCall.objects.filter(key__in=keys).values_list("key", "executed", "called_at"))
        effects = Counter(key for key, executed, _ in calls if executed)
        duplicates = {key for key, count in effects.items() if count > 1}
        problems += [f"key {key} took effect {effects[key]} times" for key in sorted(duplicates)]
        # A call made after its step's outcome was journaled is a step executed again, even
        # where an idempotent downstream absorbed it.
        journaled_at = {
            f"{run_id}:{seq}": at
            for run_id, seq, at in JournalEntry.objects.filter(
                run_id__in=run_ids, phase="outcome", status="succeeded"
            ).values_list("run_id", "seq", "created_at")
        }
        for key, executed, called_at in calls:
            if key in journaled_at and called_at > journaled_at[key] and key not in duplicates:
                duplicates.add(key)
                problems.append(f"key {key} was called again after its outcome was journaled")

        outcomes = {}
        for run_id, seq in JournalEntry.objects.filter(
            run_id__in=run_ids, phase="outcome", status="succeeded"
        ).values_list("run_id", "seq"):
            outcomes.setdefault(run_id, set()).add(seq)

        counts = Counter()
        for run in Run.objects.filter(id__in=run_ids):
            counts[run.status] += 1
            done = outcomes.get(run.id, set())
            if run.status == RunStatus.SUCCEEDED:
                expected = chaos_expected_total(run.input["account"])
                if run.output != {"account": run.input["account"], "total": expected}:
                    problems.append(f"run {run.id} returned {run.output}, expected total {expected}")
                    lost.add(run.id)
                if done != set(range(1, step_count + 1)):
                    problems.append(f"run {run.id} succeeded with journaled steps {sorted(done)}")
                    lost.add(run.id)
            elif run.status == RunStatus.NEEDS_ATTENTION:
                if JournalEntry.in_doubt(run.id) is None:
                    problems.append(f"run {run.id} needs attention without a step in doubt: {run.status_reason}")
                    lost.add(run.id)
            elif run.id not in unsettled:
                problems.append(f"run {run.id} ended {run.status}: {run.error or run.status_reason}")
                lost.add(run.id)
            # Every effect in the outside world has its journaled outcome, or is the step in doubt.
            in_doubt = JournalEntry.in_doubt(run.id)
            for seq in range(1, step_count + 1):
                if effects.get(f"{run.id}:{seq}") and seq not in done and not (in_doubt and in_doubt.seq == seq):
                    problems.append(f"run {run.id} step {seq} took effect but its outcome is not journaled")
                    lost.add(run.id)

        reconciled = JournalEntry.objects.filter(run_id__in=run_ids, actor__endswith="(reconciled)").count()
        rerun = JournalEntry.objects.filter(
            run_id__in=run_ids, phase="intent", attempt__gt=1, name="chaos_deposit"
        ).count()
        return {
            "succeeded": counts[RunStatus.SUCCEEDED],
            "needs_attention": counts[RunStatus.NEEDS_ATTENTION],
            "lost": len(lost),
            "duplicates": len(duplicates),
            "problems": problems,
            "reconciled": reconciled,
            "rerun": rerun,
        }
