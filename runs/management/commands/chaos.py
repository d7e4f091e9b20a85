"""Crash proof: run the chaos agent on real workers while SIGKILLing them, then count.

    python manage.py chaos --runs 40 --workers 2 --kill-every 1 [--fork | --no-fork] [--rollback]

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

With --rollback, each chaos run is asked to fail after its last step, and is rolled back once it
has failed, while workers are still being killed. This process acts as the operator, in the name
of the system actor "chaos": a run that needs attention with a write in doubt has the step
resolved from the ledger's truth (it happened, with its result, or it failed); a failed run is
rolled back with the plan it is shown, its irreversible steps acknowledged. The chaos writes'
compensation, chaos_undo, takes effect on the ledger once per key; the rollback run's input says
which step each of its steps undoes. Once every run is compensated or compensation_failed (or
the time is up), the last line is

    chaos: runs=N failed=F needs_attention=A duplicate_effects=E kills=K compensated=C compensation_failed=X duplicate_compensations=D lost=L

failed: runs that failed (as asked, or at a step in doubt the ledger showed never happened)
and were rolled back; needs_attention: runs that had a step in doubt resolved on the way;
duplicate_effects: as above, for the runs' own steps; duplicate_compensations: steps whose
compensation took effect more than once, or was called again after its outcome was journaled;
lost: runs that never reached compensated or compensation_failed, or whose rollback left a
step that took effect in the ledger not undone (a compensation_failed run's steps not undone
are named, not counted). Exits non-zero when E, D or L is above zero.
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
from runs.services import ActionRefused, Resolution, resolve_step, roll_back, rollback_plan
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
        parser.add_argument(
            "--rollback", action="store_true",
            help="each run fails after its last step and is rolled back, while workers are still killed",
        )

    def handle(self, *args, runs, workers, kill_every, lease, timeout, seed, fork, rollback, **options):
        require_demo("chaos")
        if runs < 1 or workers < 1 or kill_every <= 0:
            raise CommandError("--runs and --workers must be at least 1, --kill-every above 0")
        chooser = random.Random(seed)
        fork = settings.WORKER_FORK if fork is None else fork
        database = use_scratch_database("chaos")
        settings.RUN_LEASE_SECONDS = lease
        # Killing workers every second or so is this command's point: a run may lose several
        # leases in a row before it finishes a step. The poison-run guard (RUN_LOST_LEASES_LIMIT,
        # tests/test_poison.py) would park it; here the journal is what is measured.
        settings.RUN_LOST_LEASES_LIMIT = 1000
        env = project_env(RUN_LEASE_SECONDS=str(lease), RUN_LOST_LEASES_LIMIT="1000")
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
        run_input = {"fail_at_end": True} if rollback else {}
        run_ids = [
            start_run("chaos", {"account": n, **run_input}, started_by=Actor.system("chaos")).id for n in range(runs)
        ]
        operator = Operator(run_ids) if rollback else None
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
                if operator:
                    operator.act()
                ended = ROLLED_BACK if operator else SETTLED
                unsettled -= set(
                    Run.objects.filter(id__in=unsettled, status__in=ended).values_list("id", flat=True)
                )
                time.sleep(0.2)
        finally:
            for process in pool:
                kill_worker(process)
        elapsed = time.monotonic() - began
        if operator:
            return self.report_rollbacks(operator, run_ids, unsettled, elapsed, kills)

        report = compare_with_ledger(run_ids, unsettled)
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

    def report_rollbacks(self, operator, run_ids, unsettled, elapsed, kills):
        report = compare_rollbacks_with_ledger(operator, run_ids, unsettled)
        reconciled, rerun = recoveries(run_ids, "chaos_deposit")
        rollback_ids = Run.objects.filter(rollback_of_id__in=run_ids).values_list("id", flat=True)
        _, undo_rerun = recoveries(rollback_ids, "chaos_undo")
        self.stdout.write(
            f"chaos: rolled back in {elapsed:.1f}s; {reconciled} in-doubt steps reconciled, "
            f"{rerun} idempotent writes re-run after a crash; {operator.resolved['happened']} steps in doubt "
            f"resolved as happened and {operator.resolved['fail']} as failed from the ledger; "
            f"{undo_rerun} compensations re-run after a crash"
        )
        for line in report["problems"]:
            self.stdout.write(f"chaos: problem: {line}")
        duplicates, lost = report["duplicate_compensations"], report["lost"]
        self.stdout.write(
            f"chaos: runs={len(run_ids)} failed={report['failed']} needs_attention={len(operator.needed_attention)} "
            f"duplicate_effects={report['duplicate_effects']} kills={kills} "
            f"compensated={report['compensated']} compensation_failed={report['compensation_failed']} "
            f"duplicate_compensations={duplicates} lost={lost}"
        )
        sys.stdout.flush()
        if duplicates or lost or report["duplicate_effects"]:
            raise CommandError(
                f"{duplicates} compensations took effect twice, {lost} runs lost, "
                f"{report['duplicate_effects']} effects twice"
            )


def compare_with_ledger(run_ids, unsettled):
    """Compare each chaos run's journal with the ledger (`unsettled`: the runs that never
    settled); also used by `manage.py faults`."""
    # Imported here, not at the top: the demo's models can be imported only when its app is
    # installed, and without it this command must still load to say so (require_demo).
    from tools.demo.proving import CHAOS_STEPS, chaos_expected_total

    step_count = len(CHAOS_STEPS)
    problems = []
    lost = set(unsettled)
    for run_id in unsettled:
        problems.append(f"run {run_id} never settled")
    keys = {f"{run_id}:{seq}" for run_id in run_ids for seq in range(1, step_count + 1)}
    effects, duplicates = effects_in_ledger(run_ids, keys, problems)

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

    reconciled, rerun = recoveries(run_ids, "chaos_deposit")
    return {
        "succeeded": counts[RunStatus.SUCCEEDED],
        "needs_attention": counts[RunStatus.NEEDS_ATTENTION],
        "lost": len(lost),
        "duplicates": len(duplicates),
        "problems": problems,
        "reconciled": reconciled,
        "rerun": rerun,
    }


def effects_in_ledger(run_ids, keys, problems):
    """How often each key took effect in the ledger, and the keys that took effect more than once
    or were called again after their step's outcome was journaled (a step executed again, even
    where an idempotent downstream absorbed it); each of those is named in `problems`."""
    from tools.demo.models import LedgerCall

    calls = list(LedgerCall.objects.filter(key__in=keys).values_list("key", "executed", "called_at"))
    effects = Counter(key for key, executed, _ in calls if executed)
    duplicates = {key for key, count in effects.items() if count > 1}
    problems += [f"key {key} took effect {effects[key]} times" for key in sorted(duplicates)]
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
    return effects, duplicates


def recoveries(run_ids, idempotent_tool):
    """Steps in doubt that a reconcile hook settled, and calls of an idempotent tool that ran
    again after a crash."""
    reconciled = JournalEntry.objects.filter(run_id__in=run_ids, actor__endswith="(reconciled)").count()
    rerun = JournalEntry.objects.filter(
        run_id__in=run_ids, phase="intent", attempt__gt=1, name=idempotent_tool
    ).count()
    return reconciled, rerun


# --rollback --------------------------------------------------------------------------------------

S = RunStatus
ROLLED_BACK = {S.COMPENSATED, S.COMPENSATION_FAILED}
# Where a rollback may start (runs.rollback.ROLLBACK_FROM), but for needs attention: a step in
# doubt there is resolved first, and the run goes on to its failure.
STOPPED = {S.FAILED, S.CANCELLED, S.PAUSED}


class Operator:
    """What an operator would do with the chaos runs: resolve each step in doubt from the ledger,
    then roll each stopped run back with the plan it is shown. One pass per call of act()."""

    actor = Actor.system("chaos")

    def __init__(self, run_ids):
        self.waiting = set(run_ids)  # not rolled back yet
        self.plans = {}  # run id -> the plan confirmed
        self.stopped_as = Counter()  # the status each run was rolled back from
        self.needed_attention = set()
        self.resolved = Counter()  # happened, fail
        self.problems = []
        self.refused = set()

    def act(self):
        for run in Run.objects.filter(id__in=self.waiting, status__in=STOPPED | {S.NEEDS_ATTENTION}):
            try:
                if run.status == S.NEEDS_ATTENTION:
                    self.resolve(run)
                else:
                    self.roll_back(run)
            except ActionRefused as refused:
                self.problems.append(f"run {run.id} ({run.status}): refused: {refused}")
                self.refused.add(run.id)
                self.waiting.discard(run.id)

    def resolve(self, run):
        """The ledger knows whether the step's key took effect: say so, as an operator would."""
        from tools.demo.models import LedgerCall
        from tools.demo.proving import chaos_result

        step = JournalEntry.in_doubt(run.id)
        if step is None:
            raise ActionRefused(f"it needs attention without a step in doubt: {run.status_reason}")
        took = LedgerCall.objects.filter(key=step.idempotency_key, executed=True).first()
        if took:
            resolve_step(run.id, step.seq, Resolution.HAPPENED, actor=self.actor,
                         result=chaos_result(step.name, took.amount),
                         reason=f"the ledger shows key {step.idempotency_key} took effect")
        else:
            resolve_step(run.id, step.seq, Resolution.FAIL, actor=self.actor,
                         reason=f"the ledger shows key {step.idempotency_key} never took effect")
        self.needed_attention.add(run.id)
        self.resolved[Resolution.HAPPENED if took else Resolution.FAIL] += 1

    def roll_back(self, run):
        plan = rollback_plan(run)
        roll_back(run.id, actor=self.actor, reason="chaos", shown_digest=plan.digest,
                  acknowledged=[step.key for step in plan.irreversible])
        self.plans[run.id] = plan
        self.stopped_as[run.status] += 1
        self.waiting.discard(run.id)


def compare_rollbacks_with_ledger(operator, run_ids, unsettled):
    """Compare each run's rollback with the ledger: every write of a run that took effect was
    undone, and none twice."""
    from tools.demo.models import LedgerCall
    from tools.demo.proving import CHAOS_STEPS

    problems = list(operator.problems)
    lost = set(unsettled) | operator.refused
    runs = {run.id: run for run in Run.objects.filter(id__in=run_ids)}
    for run_id in sorted(unsettled, key=str):
        rollbacks = list(Run.objects.filter(rollback_of_id=run_id).values_list("id", "status"))
        problems.append(f"run {run_id} never reached compensated or compensation_failed: it is "
                        f"{runs[run_id].status} ({runs[run_id].status_reason or 'no reason given'}); "
                        f"its rollback runs: {rollbacks or 'none'}")

    # The runs' own steps: as without --rollback, no key took effect twice.
    forward_keys = {f"{run_id}:{seq}" for run_id in run_ids for seq in range(1, len(CHAOS_STEPS) + 1)}
    effects, duplicate_effects = effects_in_ledger(run_ids, forward_keys, problems)

    # The compensations: the rollback run's journal names each of its steps' keys, and its input
    # (the plan, frozen) the step each of them undoes.
    rollback_runs = list(Run.objects.filter(rollback_of_id__in=run_ids))
    rollback_ids = [run.id for run in rollback_runs]
    undoes = {}  # the key of a compensation step -> the key of the step it undoes
    for rollback_run in rollback_runs:
        planned = rollback_run.input["compensations"]
        for seq, key, name, args in JournalEntry.objects.filter(
            run=rollback_run, kind=JournalEntry.Kind.TOOL, phase=JournalEntry.Phase.INTENT
        ).values_list("seq", "idempotency_key", "name", "args"):
            wanted = planned[seq - 1] if seq <= len(planned) else None
            if wanted is None or (wanted["compensation"], wanted["args"]) != (name, args):
                problems.append(f"rollback run {rollback_run.id} step {seq} ({name} {args}) is not in its plan")
                continue
            undoes[key] = f"{wanted['run_id']}:{wanted['seq']}"
    undo_calls = list(LedgerCall.objects.filter(tool="chaos_undo").values_list("key", "executed", "amount"))
    # A compensation key that took effect twice, or was called again after its outcome was
    # journaled, is a compensation executed twice (named in problems by effects_in_ledger).
    undo_effects, twice = effects_in_ledger(rollback_ids, {key for key, *_ in undo_calls}, problems)
    undone = Counter()  # the key of an undone step -> how many compensations took effect
    unknown = set()
    for key, count in undo_effects.items():
        if key in undoes:
            undone[undoes[key]] += count
        else:
            problems.append(f"compensation key {key} took effect, and no rollback run's step has it")
            unknown.add(key)
    problems += [f"step {step} was undone {count} times" for step, count in sorted(undone.items()) if count > 1]
    # Per undone step: undone more than once, or its compensation executed again.
    undone_twice = {step for step, count in undone.items() if count > 1} | {undoes[key] for key in twice if key in undoes}
    duplicate_compensations = len(undone_twice) + len(unknown | (twice - set(undoes)))
    amounts = {key: amount for key, executed, amount in
               LedgerCall.objects.filter(key__in=forward_keys, executed=True).values_list("key", "executed", "amount")}
    for key, executed, amount in undo_calls:
        if executed and key in undoes and amounts.get(undoes[key]) != amount:
            problems.append(f"compensation {key} took back {amount}, step {undoes[key]} had {amounts.get(undoes[key])}")

    status = Counter()
    for run_id, plan in operator.plans.items():
        run = runs[run_id]
        status[run.status] += 1
        planned = {step.key for step in plan.compensations}
        # What the plan undoes is what took effect in the world: each write whose key took effect.
        took_effect = {key for key in forward_keys if key.startswith(f"{run_id}:") and effects.get(key)}
        if planned != took_effect:
            problems.append(f"run {run_id}'s plan undoes {sorted(planned)}, the ledger shows {sorted(took_effect)} took effect")
            lost.add(run_id)
        not_undone = sorted(key for key in planned if not undone.get(key))
        if run.status == S.COMPENSATION_FAILED:
            problems.append(f"run {run_id} compensation_failed ({run.status_reason}); not undone: {not_undone}")
        elif run.status == S.COMPENSATED and not_undone:
            problems.append(f"run {run_id} is compensated, and {not_undone} were not undone")
            lost.add(run_id)
    return {
        "failed": operator.stopped_as[S.FAILED],
        "compensated": status[S.COMPENSATED],
        "compensation_failed": status[S.COMPENSATION_FAILED],
        "duplicate_effects": len(duplicate_effects),
        "duplicate_compensations": duplicate_compensations,
        "lost": len(lost),
        "problems": problems,
    }
