"""Retry discipline under a storm: a flaky tool called by many runs on real workers, under our
retry policy and under the naive one agent frameworks use by default, counted side by side.

    python manage.py storm --runs 50 --failure-rate 1.0 --seconds 20 [--lease 5]

Works in its own database (agentops_storm, or DBNAME_storm for a DATABASE_URL naming another;
made afresh each time), so the dashboard's data is never touched. Needs the demo (DEMO=1): the
agents and tools are in tools.demo.proving. The far side of the tools (tools.demo.models
StormService and StormCall) fails each call at the failure rate (always at 1.0, at random
below it), before or after taking effect, and records every call it receives.

It starts two worker processes (the first with the scheduler, which wakes runs after a
backoff), then runs two phases of N runs each, one after the other:

1. ours: the `storm` agent asks the model once, then calls `storm_call` (an idempotent write,
   8 attempts with backoff from 0.2 s up to 2 s, behind its circuit breaker, which is reset
   first);
2. naive: the `storm_naive` agent calls `storm_call_naive` (the same far side), which is tried
   six times at once with no breaker, and after each failed call asks the model again with the
   error, up to five times, with no budget and no loop guard.

A phase lasts until every run has settled or --seconds have passed; its unfinished runs are
then cancelled (audited, as the system actor "storm"), so that nothing more happens, and it is
counted. The last line:

    storm: tool_calls=A naive_tool_calls=B amplification=X naive_amplification=Y retry_tokens=T naive_retry_tokens=U parked=P

tool_calls: calls that reached the far side; amplification: tool calls per run; retry_tokens:
model tokens spent because a call failed (every model call of a run after its first, and the
tokens of model calls that repeated a failed attempt: runs.budgets.Spent.retry_tokens); parked:
runs of ours in needs_attention at the end of its window. The line before it says how many runs
succeeded in each phase and how many keys reached the far side twice with a success (two
answered successes, or two effects); the command exits 1 if there is any.
"""

import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from rq import Worker

from runs.actors import Actor
from runs.budgets import spent_from
from runs.models import JournalEntry, Run, RunStatus
from runs.moves import SETTLED, start_run
from runs.processes import kill_worker, project_env, start_manage, use_scratch_database
from runs.queue import run_queue
from runs.services import ActionRefused, cancel
from runs.sweeper import sweep
from tools import breakers
from tools.demo import require_demo
from tools.registry import TOOLS

ACTOR = Actor.system("storm")
WORKERS = 2
# Statuses in which a run may still do something: at the end of a window these are cancelled.
UNFINISHED = {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING}


@dataclass
class Phase:
    name: str
    runs: int
    seconds: float  # how long the window lasted
    statuses: Counter  # each run's status at the end of the window
    breaker: str  # the tool's breaker at the end of the window, for people
    tool_calls: int  # calls that reached the far side
    effects: int  # keys that took effect
    repeated_effects: int  # runs whose item took effect under more than one key
    duplicate_successes: int  # keys answered with a success, or taking effect, more than once
    llm_calls: int
    retry_tokens: int

    @property
    def amplification(self):
        return self.tool_calls / self.runs


class Command(BaseCommand):
    help = "Start runs that need a failing tool, under our retry policy and a naive one, and count the calls and tokens."

    def add_arguments(self, parser):
        parser.add_argument("--runs", type=int, default=50, help="runs per phase")
        parser.add_argument("--failure-rate", type=float, default=1.0,
                            help="share of the tool's calls that fail, from 0 to 1")
        parser.add_argument("--seconds", type=float, default=20, help="the longest each phase may last")
        parser.add_argument("--lease", type=int, default=5, help="lease seconds for the workers")

    def handle(self, *args, runs, failure_rate, seconds, lease, **options):
        require_demo("storm")
        if runs < 1 or seconds <= 0 or lease < 1 or not 0 <= failure_rate <= 1:
            raise CommandError("--runs and --lease must be at least 1, --seconds above 0, --failure-rate from 0 to 1")
        # Imported here, not at the top: the demo's modules can be imported only when its app is
        # installed, and without it this command must still load to say so (require_demo).
        from tools.demo.models import StormService
        from tools.demo.proving import NAIVE_BUDGET

        database = use_scratch_database("storm")
        settings.RUN_LEASE_SECONDS = lease
        env = project_env(RUN_LEASE_SECONDS=str(lease))
        log_dir = Path(tempfile.mkdtemp(prefix="agentops-storm-"))
        self.say(f"database {database}, failure rate {failure_rate:g}, {runs} runs per policy for at most "
                 f"{seconds:g} s each, {WORKERS} workers (logs in {log_dir})")
        self.say(f"breakers open at {settings.BREAKER_FAILURE_PERCENT}% of at least {settings.BREAKER_MIN_CALLS} "
                 f"calls failed in {settings.BREAKER_WINDOW_SECONDS} s, for {settings.BREAKER_COOLDOWN_SECONDS} s")
        # The workers are other processes: they read the rate from the far side's own table.
        StormService.set_failure_rate(failure_rate)
        # A breaker left open by an earlier storm would hold our runs from the start.
        breakers.reset("storm_call", actor=ACTOR)

        workers = self.start_workers(env, log_dir)
        try:
            ours = self.phase("ours", "storm", "storm_call", runs, seconds, budget=None)
            naive = self.phase("naive", "storm_naive", "storm_call_naive", runs, seconds, budget=NAIVE_BUDGET)
        finally:
            for process in workers:
                kill_worker(process)

        for phase in (ours, naive):
            self.report(phase)
        duplicates = ours.duplicate_successes + naive.duplicate_successes
        self.say(f"duplicate_successes={ours.duplicate_successes} naive_duplicate_successes={naive.duplicate_successes} "
                 f"succeeded={ours.statuses[RunStatus.SUCCEEDED]} "
                 f"naive_succeeded={naive.statuses[RunStatus.SUCCEEDED]} runs={runs}")
        self.say(f"tool_calls={ours.tool_calls} naive_tool_calls={naive.tool_calls} "
                 f"amplification={ours.amplification:.2f} naive_amplification={naive.amplification:.2f} "
                 f"retry_tokens={ours.retry_tokens} naive_retry_tokens={naive.retry_tokens} "
                 f"parked={ours.statuses[RunStatus.NEEDS_ATTENTION]}")
        sys.stdout.flush()
        if duplicates:
            sys.exit(1)

    def say(self, message):
        self.stdout.write(f"storm: {message}")
        self.stdout.flush()

    def start_workers(self, env, log_dir):
        """Two `manage.py worker` processes, once both listen on the queue (so that a window
        measures the work, not their start)."""
        names = [f"storm-{n}-{time.time_ns()}" for n in range(1, WORKERS + 1)]
        workers = [
            start_manage(["worker", "--name", name, *(["--with-scheduler"] if n == 0 else [])], env,
                         open(log_dir / f"{name}.log", "w"))
            for n, name in enumerate(names)
        ]
        deadline = time.monotonic() + 60
        while not set(names) <= {worker.name for worker in Worker.all(queue=run_queue())}:
            if time.monotonic() > deadline or any(process.poll() is not None for process in workers):
                for process in workers:
                    kill_worker(process)
                raise CommandError(f"the workers did not start; see {log_dir}")
            time.sleep(0.1)
        return workers

    def phase(self, name, agent, tool_name, runs, seconds, budget):
        ids = [start_run(agent, {"item": n}, started_by=ACTOR, budget=budget).id for n in range(runs)]
        began = time.monotonic()
        runs_of_phase = Run.objects.filter(id__in=ids)
        while time.monotonic() - began < seconds:
            close_old_connections()
            if not runs_of_phase.exclude(status__in=SETTLED).exists():
                break
            # The sweeper's pass, as `manage.py chaos` makes it: a lost job or an overdue
            # wake-up does not hold a run until the window ends.
            sweep()
            time.sleep(0.2)
        window = time.monotonic() - began
        statuses = Counter(runs_of_phase.values_list("status", flat=True))
        breaker = describe_breaker(tool_name)
        self.stop(ids)
        calls = far_side_calls(tool_name, ids)
        return Phase(
            name=name, runs=runs, seconds=window, statuses=statuses, breaker=breaker,
            **calls, **model_calls(ids),
        )

    def stop(self, ids):
        """Cancel the runs that have not finished, and wait until none is running any more: what
        is counted then stays as it is."""
        for run_id in Run.objects.filter(id__in=ids, status__in=UNFINISHED).values_list("id", flat=True):
            try:
                cancel(run_id, actor=ACTOR, reason="storm: the window is over")
            except ActionRefused:
                pass  # it finished meanwhile
        deadline = time.monotonic() + 60
        # A running run stops at its next step boundary.
        while Run.objects.filter(id__in=ids, status__in=UNFINISHED).exists():
            if time.monotonic() > deadline:
                raise CommandError("cancelled runs were still running after 60 s")
            time.sleep(0.1)

    def report(self, phase):
        s = phase.statuses
        unfinished = sum(s[status] for status in UNFINISHED)
        ended = "every run settled" if not unfinished else "the window ran out"
        self.say(
            f"{phase.name}: {phase.seconds:.1f} s ({ended}): succeeded={s[RunStatus.SUCCEEDED]} "
            f"failed={s[RunStatus.FAILED]} parked={s[RunStatus.NEEDS_ATTENTION]} waiting={s[RunStatus.WAITING]} "
            f"queued_or_running={s[RunStatus.QUEUED] + s[RunStatus.RUNNING]}"
            + (f"; those {unfinished} unfinished were cancelled" if unfinished else "")
        )
        self.say(
            f"{phase.name}: {phase.tool_calls} tool calls ({phase.amplification:.2f} per run), {phase.effects} keys "
            f"took effect, {phase.repeated_effects} runs' items took effect under more than one key, "
            f"{phase.duplicate_successes} keys succeeded twice; {phase.llm_calls} model calls, "
            f"{phase.retry_tokens} tokens after a failure; breaker: {phase.breaker}"
        )


def describe_breaker(tool_name):
    if not TOOLS[tool_name].breaker:
        return "none"
    state = breakers.states([tool_name])[tool_name]
    return f"{state.state}, {state.failed} of {state.calls} calls failed in the last {state.window_seconds} s"


def far_side_calls(tool_name, run_ids):
    """What the far side recorded of the tool's calls for these runs (a key is RUN-ID:SEQ)."""
    from tools.demo.models import StormCall

    runs = {str(run_id) for run_id in run_ids}
    calls = [
        (key, took_effect, answered)
        for key, took_effect, answered in StormCall.objects.filter(tool=tool_name).values_list(
            "key", "took_effect", "answered")
        if key.rsplit(":", 1)[0] in runs
    ]
    effects = Counter(key for key, took_effect, _ in calls if took_effect)
    successes = Counter(key for key, _, answered in calls if answered)
    effects_per_run = Counter(key.rsplit(":", 1)[0] for key in effects)
    return {
        "tool_calls": len(calls),
        "effects": len(effects),
        "repeated_effects": sum(1 for count in effects_per_run.values() if count > 1),
        "duplicate_successes": len({key for key in effects if effects[key] > 1}
                                   | {key for key in successes if successes[key] > 1}),
    }


def model_calls(run_ids):
    """The model calls of these runs, and the tokens spent because a tool call failed: every
    model call of a run after its first (a re-prompt), and the first one's tokens when it
    repeated a failed attempt (runs.budgets.Spent.retry_tokens)."""
    rows = defaultdict(list)
    for row in JournalEntry.objects.filter(run_id__in=run_ids).order_by("run_id", "seq", "attempt", "id"):
        rows[row.run_id].append(row)
    llm_calls = retry_tokens = 0
    for run_rows in rows.values():
        answers = [row for row in run_rows if row.kind == "llm" and row.phase == "outcome" and row.status == "succeeded"]
        llm_calls += len(answers)
        if not answers:
            continue
        first = answers[0].seq
        retry_tokens += spent_from([row for row in run_rows if row.seq == first]).retry_tokens
        retry_tokens += sum(tokens(row.result) for row in answers[1:])
    return {"llm_calls": llm_calls, "retry_tokens": retry_tokens}


def tokens(result):
    return int(result.get("input_tokens", 0)) + int(result.get("output_tokens", 0))
