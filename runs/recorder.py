"""The journal protocol: how a run's steps are recorded, replayed and recovered.

Read this file top to bottom; ../docs/journal.md says the same in prose.

An agent is a plain function `fn(ctx, input)`. Everything it does that touches the world goes
through its Context (runs/context.py): tool calls, LLM calls, sleeps, the clock, random ids,
child runs. The Context turns each request into a Step and hands it to the Recorder, the only
writer of journal rows. Steps are numbered seq = 1, 2, 3 ... in the order the agent asks for
them. Because the agent's own code is deterministic apart from what it asks ctx for, running it
again from the top asks for the same steps in the same order; that is how a run resumes after
its worker died.

When the agent reaches step seq, the Recorder looks at what the journal holds for it:

1. An outcome: the step already happened. Check that the code asks for the same step (kind, name
   and a hash of the arguments). Same: hand back the recorded result, or raise the recorded
   error, with no side effect and nothing spent. Different: the code changed under a live run;
   the run goes to needs_attention with an error that names both steps.
2. An intent and no outcome: a worker died between the two, so we do not know whether the call
   happened. The step is in doubt, and its effect decides:
   - an idempotent write (the tool's downstream dedupes on the idempotency key): run it again
     with the same key;
   - a tool with a reconcile hook: ask it whether key K happened, and record what it says;
   - anything else: the run goes to needs_attention, and an operator decides (it happened, with
     a result; run it again; or fail it). See runs.services.resolve_step.
3. Nothing: ask the policy (tools/policy.py: disabled, freeze, deny, cap, approval), which
   answers go, refuse or hold; then write the intent, call the tool with its idempotency key
   (run id and seq, the same on every worker and every attempt), write the outcome. A step
   without side effects (a read, an LLM call, the clock) writes only its outcome: one commit.
4. A failed attempt (outcome `retry`): the step is not over. Its row says when the next attempt
   is due (`next_at`), or that its attempts ran out (`exhausted`, a person decides).

Every attempt of a tool or LLM step (see `_attempt`) first passes the run's budgets and loop
check (runs/budgets.py) and the tool's circuit breaker (tools/breakers.py); runs under its
policy's timeout; and, if it fails, is judged by its retry policy (runs/retries.py): retried
after a backoff (a short one in the worker, a longer one as a wait of kind retry that frees the
worker), failed, or left in doubt (a write that cannot dedupe and timed out). A run that reaches
a limit parks in needs_attention, or fails if its agent says so (`on_limit`).

Every journal write is one SQL statement (WRITE_SQL below) that inserts the row only while the
writer still holds the run's lease at the epoch it claimed (fencing): a worker that was stopped
and came back after another worker took over cannot add a row. The same statement tells the
writer whether an operator asked for a pause or a cancel, which is honoured at the step boundary:
an intent is not written while one is pending, so a paused run never leaves a step in doubt.
"""

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Callable

import psycopg
from django.db import DatabaseError, connection
from django.utils import timezone
from pydantic_core import to_jsonable_python

from runs import live
from runs.agents import AGENTS
from runs.budgets import Counter, Trail, exceeded, limits_for
from runs.models import JournalEntry, ParkedBy
from runs.retries import (
    FAIL, IN_DOUBT, SLEEP_IN_WORKER_UP_TO_SECONDS, CallTimedOut, RetryPolicy, call_with_timeout, decide,
)
from runs.storable import unstorable, visible
from runs.waits import WaitFor
from tools import breakers
from tools.policy import Go, Hold, Mismatch, Policy, Refuse
from tools.registry import TOOLS, ContractViolation, Reconciled

log = logging.getLogger(__name__)
INTENT, OUTCOME = JournalEntry.Phase.INTENT, JournalEntry.Phase.OUTCOME
SUCCEEDED, FAILED, ABANDONED, RETRY = (
    JournalEntry.Status.SUCCEEDED,
    JournalEntry.Status.FAILED,
    JournalEntry.Status.ABANDONED,
    JournalEntry.Status.RETRY,
)
K = JournalEntry.Kind


# What the agent sees ---------------------------------------------------------------------------


class ToolError(Exception):
    """A step failed. The agent may catch it and adapt; uncaught, it fails the run."""

    def __init__(self, type, message, details=None):
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        # What else the journal recorded about the failure (an operator's denial: who, which
        # tool, why); an uncaught error carries it into the run's error.
        self.details = details or {}


# Why a run stops advancing. These are BaseExceptions so that an agent's `except Exception`
# cannot swallow them. The engine (runs/engine.py) turns each into the run's next move.


class Suspend(BaseException):
    pass


class Wait(Suspend):
    """The run waits (runs.waits.WaitFor says for what) without holding a worker."""

    def __init__(self, wait: WaitFor):
        super().__init__(wait.reason)
        self.wait = wait


class PauseRequested(Suspend):
    pass


class CancelRequested(Suspend):
    pass


class NeedsAttention(Suspend):
    """A person must decide: a step in doubt, code that no longer matches the journal, or a
    limit reached (`parked_by`: a ParkedBy)."""

    def __init__(self, reason, seq, parked_by=""):
        super().__init__(reason)
        self.reason, self.seq, self.parked_by = reason, seq, parked_by


class Fenced(Suspend):
    """Another worker holds the run now; this one must stop without writing anything."""


class FailRun(Suspend):
    """The run fails now, whatever the agent would do (a budget is exceeded)."""

    def __init__(self, error):
        super().__init__(error["message"])
        self.error = error


class JournalUnavailable(Suspend):
    """The journal could not be written (the database failed): stop, and let the lease lapse."""


class EndOfJournal(Suspend):
    """A dry run (the replay check) reached a step the journal has not recorded yet."""

    def __init__(self, seq):
        super().__init__(f"the journal ends before step {seq}")
        self.seq = seq


# The pieces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """What the agent asks for at one seq. Built once, by the Context; never changed (a call
    with approved arguments is a new Step with the same identity)."""

    kind: str
    name: str
    args: Any  # what identifies the step (hashed), and what an outcome-only row stores
    call: Callable[[str], Any] | None  # call(idempotency_key) -> JSON result
    effect: str = ""
    # Steps with side effects record their intent before they happen; the rest record only
    # their outcome.
    writes_intent: bool = False
    idempotent: bool = False
    reconcile: Callable | None = None
    # What the intent row stores, where it holds more than identifies the step (a deadline,
    # approved arguments).
    stored_args: Any = None
    # A call of a registered tool with valid arguments: the policy decides whether it runs,
    # its breaker whether it is called now.
    guarded: bool = False
    # How failed attempts are tried again, and each one's timeout (None: one attempt, no
    # limit); whether a second call can do no harm (runs/retries.py).
    retry: RetryPolicy | None = None
    repeatable: bool = False
    breaker: bool = False

    @cached_property
    def args_json(self):
        return canonical_json(self.args)

    @cached_property
    def args_hash(self):
        return hash_json(self.args_json)

    @property
    def is_tool(self):
        return self.kind == K.TOOL


@dataclass(frozen=True)
class Called:
    result: Any


def _after_interruption():
    """A call stopped by its timeout may have been stopped in the middle of a database command
    on this process's connection (the journal's too): a connection not at rest is closed, and
    the next journal write opens a fresh one."""
    raw = connection.connection
    if raw is None:
        return
    try:
        at_rest = raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    except Exception:
        at_rest = False
    if not at_rest and not connection.in_atomic_block:
        connection.close()


def _short(text, limit=120):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_step(kind, name, hash_):
    label = f"{kind} {name!r}" if name else kind
    return f"{label} (arguments {hash_[:12]})"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_json(text):
    return hashlib.sha256(text.encode()).hexdigest()


def as_json(value):
    """What a result becomes in the journal, and so what the agent receives, live or replayed.

    Pydantic models, dates and the like become their JSON form; anything else its text.
    """
    return json.loads(canonical_json(to_jsonable_python(value, fallback=str)))


@dataclass(frozen=True)
class Row:
    seq: int
    attempt: int
    phase: str
    kind: str
    name: str
    args: Any
    args_hash: str
    status: str
    result: Any
    error: Any


def load_journal(run_id):
    """The run's journal, as {seq: [rows in order]}: one query, read once per claim."""
    rows = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, attempt, phase, kind, name, args, args_hash, status, result, error"
            " FROM runs_journalentry WHERE run_id = %s ORDER BY seq, attempt, id",
            [run_id],
        )
        for seq, attempt, phase, kind, name, args, hash_, status, result, error in cursor:
            # Django has psycopg hand jsonb over as text.
            args, result, error = (None if v is None else json.loads(v) for v in (args, result, error))
            rows[seq].append(Row(seq, attempt, phase, kind, name, args, hash_, status, result, error))
    return rows


# The one statement that writes a journal row: it inserts only while the run is running under
# the writer's lease epoch, and reports any pending pause or cancel (an intent is refused while
# one is pending). It locks the run row FOR KEY SHARE, which the foreign key takes anyway. Every
# move of a run out of running goes through runs.moves.move, which locks the row FOR UPDATE:
# that move waits for a write in flight, and a write that waited for the move re-checks status
# and epoch on the new row and inserts nothing. (A claim only takes queued runs, so a new epoch
# always comes after such a move.) Heartbeats do not conflict with the lock.
#
# The intent of a write or delete also locks the freeze state FOR KEY SHARE (`locks_freeze`)
# and is refused while a freeze covers the run's agent: see tools/freeze.py for why no write
# intent can be recorded after a freeze has committed. The one exception is a rollback run an
# admin allowed to run during the freeze (Run.during_freeze): a person's repair.
WRITE_SQL = """
WITH run AS (
    SELECT lease_epoch, lease_owner, status, requested, agent, during_freeze FROM runs_run
    WHERE id = %(run)s::uuid FOR KEY SHARE
), freeze_now AS (
    SELECT COALESCE(NULLIF(f.global_reason, ''), f.agents ->> run.agent, '') AS reason
    FROM tools_freezestate f, run
    WHERE f.id = 1 AND %(locks_freeze)s::boolean AND NOT run.during_freeze
    FOR KEY SHARE OF f
), inserted AS (
    INSERT INTO runs_journalentry (
        run_id, seq, attempt, phase, kind, name, effect, args, args_hash, idempotency_key,
        status, result, error, actor, lease_epoch, created_at
    )
    SELECT %(run)s::uuid, %(seq)s::integer, %(attempt)s::integer, %(phase)s::varchar,
           %(kind)s::varchar, %(name)s::varchar, %(effect)s::varchar, %(args)s::jsonb,
           %(args_hash)s::varchar, %(key)s::varchar, %(status)s::varchar, %(result)s::jsonb,
           %(error)s::jsonb, %(actor)s::varchar, %(epoch)s::bigint, now()
    FROM run
    WHERE run.status = 'running' AND run.lease_epoch = %(epoch)s::bigint
      AND run.lease_owner = %(owner)s::varchar
      AND (%(phase)s::varchar = 'outcome' OR run.requested = '')
      AND NOT EXISTS (SELECT 1 FROM freeze_now WHERE freeze_now.reason <> '')
      -- Without the freeze state row there is nothing to lock: refuse, rather than race.
      AND (NOT %(locks_freeze)s::boolean OR run.during_freeze OR EXISTS (SELECT 1 FROM freeze_now))
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM inserted),
       run.status = 'running' AND run.lease_epoch = %(epoch)s::bigint
           AND run.lease_owner = %(owner)s::varchar,
       run.requested,
       CASE WHEN %(locks_freeze)s::boolean AND NOT run.during_freeze AND NOT EXISTS (SELECT 1 FROM freeze_now)
            THEN 'the freeze state is missing (run manage.py migrate)'
            ELSE (SELECT reason FROM freeze_now) END
FROM run
"""


def _run_write_sql(params):
    """Run WRITE_SQL as a prepared statement on Django's own connection.

    Parsing and planning this statement costs more than executing it, and it runs once per
    step, so it is prepared once per connection (server-side binding, which Django's default
    client-side cursor does not use).
    """
    try:
        connection.ensure_connection()
        with psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(WRITE_SQL, params, prepare=True)
            return cursor.fetchone()
    except (psycopg.Error, DatabaseError) as error:
        raise JournalUnavailable(f"could not write the journal of run {params['run']}: {error}") from error


# What the journal records of an attempt for itself: the agent's error does not carry it.
_JOURNAL_ONLY = frozenset({"type", "message", "fails_run", "not_called", "transient", "attempts", "delay_s",
                           "next_at", "exhausted"})


def _details(error):
    """A recorded error's fields beyond its type and message, and what the journal keeps of the
    attempt for itself (an operator's denial: who, which tool, why)."""
    return {key: value for key, value in error.items() if key not in _JOURNAL_ONLY}


def _json_or_null(value):
    return None if value is None else canonical_json(value)


def _suspect(text):
    # What Postgres refuses shows in the JSON text as one of these (a cheap look on every
    # write; runs.storable then looks properly).
    return "\\u0000" in text or "NaN" in text or "Infinity" in text


def _storable_json(value, text):
    """The JSON text to store for a value shown to people (arguments, errors)."""
    if text is None or not _suspect(text):
        return text
    return canonical_json(visible(value))


# The Recorder ----------------------------------------------------------------------------------


class Recorder:
    """Replays, records and recovers the steps of one advance of one run, under its lease.

    With dry_run, it only compares the code's steps with the journal (the replay check): it
    writes nothing, asks no policy and calls nothing, and stops at the journal's end.
    """

    def __init__(self, lease, journal, *, agent="", dry_run=False):
        self.lease = lease
        self.run_id = lease.run_id
        self.journal = journal
        self.agent = agent
        self.dry_run = dry_run
        self.policy = Policy(lease.run_id, agent, during_freeze=lease.during_freeze)
        self.seq = 0
        self.tool_calls = defaultdict(int)  # tool name -> its steps so far in this run, for caps
        declared = AGENTS.get(agent)
        # The limits the run started with (Run.budget), over its agent's defaults today.
        self.limits = limits_for(declared.budget if declared else None, lease.budget)
        self.on_limit = declared.on_limit if declared else "park"
        self.spending = Counter()
        for step_rows in journal.values():
            for row in step_rows:
                self.spending.add(row)
        self.trail = Trail()  # the latest identical tool calls in a row: a loop

    def record(self, step: Step):
        """The protocol for one step (see the top of this file); returns its result."""
        self.seq += 1
        rows = self.journal.get(self.seq)
        if step.guarded:
            self.tool_calls[step.name] += 1
        if step.is_tool:
            self.trail.follow(self.seq, step.name, step.args_hash)
        if not rows:
            if self.dry_run:
                raise EndOfJournal(self.seq)
            granted = self.lease.retry_grant == (self.seq, 0)  # "retry now" while its breaker held it
            if step.guarded:
                step = self._ask_policy(step)
                if not granted:
                    self._check_loop(step)
            return self._attempt(step, attempt=1, granted=granted)
        self._check_same_step(step, rows[0])
        last = rows[-1]
        if last.phase == OUTCOME and last.status in (SUCCEEDED, FAILED):
            return self._replay(last)
        if self.dry_run:
            raise EndOfJournal(self.seq)
        if step.guarded:
            step = self._rerun_as_approved(step, last)
        # An operator's "retry now" for the attempt after this one (runs.services.retry_step).
        granted = self.lease.retry_grant == (self.seq, last.attempt)
        if last.phase == OUTCOME and last.status == RETRY:
            return self._after_failed_attempt(step, last, granted)
        if last.phase == OUTCOME:  # abandoned by an operator: run it again
            return self._attempt(step, attempt=last.attempt + 1, granted=granted)
        return self._recover_in_doubt(step, last, granted)

    def _check_same_step(self, step, recorded):
        if (recorded.kind, recorded.name, recorded.args_hash) != (step.kind, step.name, step.args_hash):
            self._nondeterminism(step, "the journal has", recorded.kind, recorded.name, recorded.args_hash)

    def _nondeterminism(self, step, source, kind, name, hash_):
        """The code asks, at this seq, for another step than the one recorded: a person decides."""
        raise NeedsAttention(
            f"nondeterminism at step {self.seq}: {source} {describe_step(kind, name, hash_)}, "
            f"but the code now asks for {describe_step(step.kind, step.name, step.args_hash)}. The "
            "agent's code changed under a live run; cancel the run, or restore the code that started it.",
            self.seq,
        )

    def _replay(self, row):
        if row.status == FAILED and row.error.get("fails_run"):
            raise FailRun(row.error)  # a refusal that failed the run fails it again
        if row.status == FAILED:
            raise ToolError(row.error["type"], row.error["message"], _details(row.error))
        return row.result

    def _ask_policy(self, step):
        """The guardrails after the contract, for a tool step's first run. A refusal is
        journaled like any outcome, so a replay refuses again without asking."""
        decision = self.policy.first_run(
            TOOLS[step.name], self.seq, step.args, step.args_hash, self.tool_calls[step.name]
        )
        if isinstance(decision, Hold):
            raise Wait(decision.wait)
        if isinstance(decision, Mismatch):
            self._nondeterminism(step, decision.source, K.TOOL, decision.name, decision.args_hash)
        return self._with_arguments(step, decision)

    def _rerun_as_approved(self, step, last):
        """A step that runs again makes the call that was approved, edits included. If those
        arguments no longer fit the tool, a step abandoned by an operator fails (as its next
        attempt); a step in doubt goes to a person, since its call may have happened."""
        decision = self.policy.rerun(TOOLS[step.name], self.seq, step.args)
        if isinstance(decision, Refuse) and last.phase == INTENT:
            raise NeedsAttention(
                f"step {self.seq} ({step.effect} {step.name!r}) is in doubt, and the arguments "
                f"approved for it can no longer be used ({decision.message}). Decide: it "
                "happened (give its result), or fail it.",
                self.seq,
            )
        if isinstance(decision, Refuse):
            self._refuse(step, decision, attempt=last.attempt + 1)
        return self._with_arguments(step, decision)

    def _with_arguments(self, step, decision):
        if isinstance(decision, Refuse):
            self._refuse(step, decision)
        assert isinstance(decision, Go)
        if decision.args == step.args:
            return step
        # Run what was approved (edited arguments); the step keeps its identity, and the
        # journal keeps the arguments it ran with (secrets included, for replay).
        spec = TOOLS[step.name]
        model = spec.parse(decision.args)
        return replace(step, stored_args=decision.args, call=lambda key: spec.call(model, key))

    def _refuse(self, step, refusal, attempt=1):
        error = {"type": refusal.type, "message": refusal.message, **refusal.details, "not_called": True}
        if refusal.fails_run:
            error["fails_run"] = True
        self._write(replace(step, writes_intent=False), attempt, OUTCOME, status=FAILED, error=error)
        if refusal.fails_run:
            raise FailRun(error)
        raise ToolError(refusal.type, refusal.message, refusal.details)

    def _recover_in_doubt(self, step, intent, granted=False):
        if step.idempotent:
            return self._attempt(step, attempt=intent.attempt + 1, granted=granted)
        if step.reconcile is not None:
            try:
                found = step.reconcile(self._key())
            except Exception as error:
                raise NeedsAttention(
                    f"step {self.seq} ({step.effect} {step.name!r}) is in doubt and its reconcile "
                    f"hook failed ({type(error).__name__}: {error}). Decide: it happened (give its "
                    "result), run it again, or fail it.",
                    self.seq,
                ) from error
            if isinstance(found, Reconciled) and found.happened:
                result = as_json(found.result)
                self._write(step, intent.attempt, OUTCOME, status=SUCCEEDED, result=result,
                            actor_note="reconciled")
                return result
            if isinstance(found, Reconciled):
                return self._attempt(step, attempt=intent.attempt + 1, granted=granted)
        raise NeedsAttention(
            f"step {self.seq} ({step.effect} {step.name!r}) is in doubt: its intent was recorded "
            "and its worker stopped before recording the outcome, so it may or may not have "
            "happened. Decide: it happened (give its result), run it again, or fail it.",
            self.seq,
        )

    # Attempts, retries and limits -------------------------------------------------------------

    def _attempt(self, step, attempt, granted=False, failures=0):
        """Make attempt `attempt` of the step, and as many more as its retry policy allows while
        the backoff is short; returns the result, or raises what stops the run or the step.
        `failures`: the step's failed attempts in this round (each failed attempt's journal row
        says how many), so the next is a retry."""
        while True:
            if not granted:
                self._check_budgets(step, attempt, retry=failures > 0)
            probe = self._pass_breaker(step, granted)
            outcome = self._call(step, attempt, probe, failures)
            if isinstance(outcome, Called):
                return outcome.result
            # The attempt failed and the step is to be tried again soon, in this worker.
            attempt, granted, failures = attempt + 1, False, outcome

    def _call(self, step, attempt, probe, failures):
        """One call under the step's timeout. Returns a Called with the result, or the round's
        failures when the attempt failed and the next is due within a second (after sleeping
        until then)."""
        if step.writes_intent:
            self._write(step, attempt, INTENT)
        policy = step.retry
        try:
            result = as_json(call_with_timeout(lambda: step.call(self._key()), policy.timeout if policy else None))
        except ContractViolation as error:
            self._breaker_heard(step, failed=False, probe=probe)
            message = visible(str(error))
            self._write(step, attempt, OUTCOME, status=FAILED, error={"type": "contract", "message": message})
            raise ToolError("contract", message) from None
        except CallTimedOut as error:
            _after_interruption()
            return self._failed(step, attempt, error, probe, failures)
        except Exception as error:
            return self._failed(step, attempt, error, probe, failures)
        self._breaker_heard(step, failed=False, probe=probe)
        self._write(step, attempt, OUTCOME, status=SUCCEEDED, result=result)
        return Called(result)

    def _failed(self, step, attempt, error, probe, failures):
        """A failed attempt, judged by the step's retry policy: fail the step, leave it in doubt,
        try again (now, or after a wait that frees the worker), or stop at the last attempt."""
        policy = step.retry
        failure = visible({"type": type(error).__name__, "message": str(error)})
        if isinstance(error, CallTimedOut):
            failure["type"] = "timeout"
        verdict = decide(policy, error, repeatable=step.repeatable) if policy else FAIL
        if policy:
            failure["transient"] = policy.is_transient(error)
            self._breaker_heard(step, failed=failure["transient"], probe=probe)
        if verdict == IN_DOUBT:
            return self._failed_in_doubt(step, attempt, failure)
        if verdict == FAIL:
            self._write(step, attempt, OUTCOME, status=FAILED, error=failure)
            raise ToolError(failure["type"], failure["message"], _details(failure))
        failures += 1
        failure["attempts"] = failures
        if failures >= policy.max_attempts:
            return self._out_of_attempts(step, attempt, failure, policy)
        delay = policy.delay(failures, self._key())
        if exceeded(self.limits, self.spending.spent, "retries"):
            delay = 0.0  # the next attempt's budget check parks the run; waiting first helps nobody
        next_at = timezone.now() + timedelta(seconds=delay)
        failure.update(delay_s=delay, next_at=next_at.isoformat())
        self._write(step, attempt, OUTCOME, status=RETRY, error=failure)
        if delay > SLEEP_IN_WORKER_UP_TO_SECONDS:
            raise Wait(WaitFor.retry(self.seq, next_at, f"attempt {attempt} failed ({failure['type']}: "
                                     f"{_short(failure['message'])}); backing off {delay:g} s"))
        time.sleep(delay)
        return failures

    def _failed_in_doubt(self, step, attempt, failure):
        """A write that cannot dedupe failed on the way: it may have happened. Its intent stays
        without an outcome (in doubt, as after a crash) and it is never called again on its own.
        Its reconcile hook, if it has one, may say that it happened; otherwise a person decides."""
        found = None
        if step.reconcile is not None:
            try:
                found = step.reconcile(self._key())
            except Exception:
                log.warning("run %s step %s: reconcile hook failed after %s", self.run_id, self.seq,
                            failure["type"], exc_info=True)
        if isinstance(found, Reconciled) and found.happened:
            result = as_json(found.result)
            self._write(step, attempt, OUTCOME, status=SUCCEEDED, result=result, actor_note="reconciled")
            return Called(result)
        hook = " (its reconcile hook could not tell that it did)" if step.reconcile is not None else ""
        raise NeedsAttention(
            f"step {self.seq} ({step.effect} {step.name!r}) is in doubt: attempt {attempt} failed on the "
            f"way ({failure['type']}: {failure['message']}), so the call may have happened{hook}. It "
            "cannot dedupe, so it is not called again. Decide: it happened (give its result), run it "
            "again, or fail it.",
            self.seq,
        )

    def _out_of_attempts(self, step, attempt, failure, policy):
        message = (f"gave up after {failure['attempts']} attempts (the most its retry policy allows): "
                   f"{failure['type']}: {failure['message']}")
        if self.on_limit == "fail":
            failure.update(exhausted=True, message=message)
            self._write(step, attempt, OUTCOME, status=FAILED, error=failure)
            raise ToolError(failure["type"], message, _details(failure))
        failure["exhausted"] = True
        self._write(step, attempt, OUTCOME, status=RETRY, error=failure)
        raise self._parked(ParkedBy.RETRIES, f"step {self.seq} ({step.kind} {step.name!r}) {message}. "
                           "Retry it now, or fail it.")

    def _after_failed_attempt(self, step, last, granted):
        """The step's last attempt failed: wait out its backoff, park if its attempts ran out,
        or try again. An operator's "retry now" (the lease's retry_grant) skips both."""
        error = last.error or {}
        if not granted and error.get("exhausted"):
            raise self._parked(ParkedBy.RETRIES, f"step {self.seq} ({step.kind} {step.name!r}) gave up after "
                               f"{error.get('attempts', last.attempt)} attempts: {error.get('type')}: "
                               f"{error.get('message')}. Retry it now, or fail it.")
        next_at = datetime.fromisoformat(error["next_at"]) if error.get("next_at") else None
        if not granted and next_at is not None and timezone.now() < next_at:
            raise Wait(WaitFor.retry(self.seq, next_at, f"attempt {last.attempt} failed; backing off"))
        # A person's retry starts a fresh round of attempts.
        failures = 0 if granted else error.get("attempts", 0)
        return self._attempt(step, attempt=last.attempt + 1, granted=granted, failures=failures)

    def _check_budgets(self, step, attempt, retry):
        """The run's budgets, before an attempt of a tool or LLM step: over one, the run parks
        (or fails, as its agent says), and the call is not made."""
        if step.kind not in (K.TOOL, K.LLM) or not (step.guarded or step.kind == K.LLM):
            return
        spent = self.spending.spent
        checks = []
        if step.is_tool:
            checks.append("tool_calls")
        if retry:
            checks.append("retries")
        if step.kind == K.LLM:
            checks += ["llm_tokens", "cost_usd"]
        for key in checks:
            reason = exceeded(self.limits, spent, key)
            if reason:
                self._limit_reached(step, attempt, ParkedBy.BUDGET, key, f"{reason}; step {self.seq} "
                                    f"({step.kind} {step.name!r}) was not called")

    def _check_loop(self, step):
        repeats = self.limits.get("repeats")
        if repeats is None:
            return
        steps = self.trail.seqs
        if len(steps) >= repeats:
            self._limit_reached(step, 1, ParkedBy.LOOP, "repeats", (
                f"loop: tool {step.name!r} asked for with the same arguments {len(steps)} times in a row "
                f"(steps {', '.join(map(str, steps))}; the limit is {repeats}); step {self.seq} was not called"))

    def _limit_reached(self, step, attempt, parked_by, budget, reason):
        if self.on_limit == "fail":
            self._refuse(step, Refuse("loop" if parked_by == ParkedBy.LOOP else "budget", reason, fails_run=True,
                                      details={"budget": budget, "limit": self.limits.get(budget)}),
                         attempt=attempt)
        raise self._parked(parked_by, reason)

    def _parked(self, parked_by, reason):
        return NeedsAttention(reason, self.seq, parked_by=parked_by)

    def _pass_breaker(self, step, granted):
        """A tool's breaker, before a call: open, the step waits for it to half-open, and the call
        is not made. Returns whether this call is the breaker's one probe."""
        if not step.breaker or granted:
            return False
        verdict = breakers.check(step.name)
        if not verdict.allowed:
            until = verdict.until or timezone.now() + timedelta(seconds=1)
            raise Wait(WaitFor.retry(self.seq, until, verdict.reason or f"the breaker of {step.name!r} is open"))
        return verdict.probe

    def _breaker_heard(self, step, *, failed, probe):
        if step.breaker:
            breakers.record(step.name, failed=failed, probe=probe)

    def _key(self):
        return f"{self.run_id}:{self.seq}"

    def _write(self, step, attempt, phase, *, status="", result=None, error=None, actor_note=""):
        """Write one row under the lease (WRITE_SQL). A result the journal cannot store
        (runs/storable.py) is written as the step's failure instead, and the agent gets it as a
        ToolError: recorded once, so no later worker calls the tool again."""
        lease = self.lease
        if phase == INTENT:
            args = step.args if step.stored_args is None else step.stored_args
            stored_args = _storable_json(args, step.args_json if step.stored_args is None else canonical_json(args))
        else:
            # An outcome repeats the arguments only where no intent holds them.
            stored_args = None if step.writes_intent else _storable_json(step.args, step.args_json)
        result_json = _json_or_null(result)
        refused = None
        if result_json is not None and _suspect(result_json) and unstorable(result):
            label = f"{step.kind} {step.name!r}" if step.name else step.kind
            refused = ToolError("unstorable", f"the result of {label} at step {self.seq} cannot be "
                                f"stored in the journal: it holds {unstorable(result)}")
            status, result_json, error = FAILED, None, {"type": refused.type, "message": refused.message}
        inserted, holds_lease, requested, frozen = _run_write_sql(
            {
                "run": lease.run_id, "seq": self.seq, "attempt": attempt, "phase": phase,
                "kind": step.kind, "name": step.name, "effect": step.effect,
                "args": stored_args, "args_hash": step.args_hash,
                "key": self._key() if step.is_tool else "",
                "status": status, "result": result_json, "error": _storable_json(error, _json_or_null(error)),
                "actor": f"worker:{lease.owner}" + (f" ({actor_note})" if actor_note else ""),
                "epoch": lease.epoch, "owner": lease.owner,
                "locks_freeze": phase == INTENT and step.guarded and step.writes_intent,
            }
        )
        if not holds_lease:
            raise Fenced(f"lost the lease on run {lease.run_id} (epoch {lease.epoch})")
        # A pause or cancel is honoured here, at the step boundary: an intent was refused (so
        # nothing is in doubt), or an outcome was just recorded (so the step is complete).
        if inserted:
            live.changed(lease.run_id)
        if requested == "cancel":
            raise CancelRequested()
        if requested == "pause":
            raise PauseRequested()
        if frozen:
            # Nothing was written: the step starts afresh when the freeze lifts.
            raise Wait(WaitFor.freeze(frozen))
        assert inserted, "the journal row was neither written nor refused"
        self.spending.add(Row(self.seq, attempt, phase, step.kind, step.name, None, step.args_hash, status,
                              result, error))
        if refused:
            raise refused

    # A step with its own rules: the sleep's intent carries its deadline.

    def sleep(self, seconds):
        self.seq += 1
        self.trail.break_off()
        step = Step(kind=K.SLEEP, name="", args={"seconds": seconds}, call=None, writes_intent=True)
        rows = self.journal.get(self.seq)
        if rows:
            self._check_same_step(step, rows[0])
            if rows[-1].phase == OUTCOME:
                return
            if self.dry_run:
                raise EndOfJournal(self.seq)
            wake_at = datetime.fromisoformat(rows[0].args["wake_at"])
        else:
            if self.dry_run:
                raise EndOfJournal(self.seq)
            # The intent carries the deadline, so every replay keeps the first one.
            wake_at = timezone.now() + timedelta(seconds=seconds)
            self._write(replace(step, stored_args={"seconds": seconds, "wake_at": wake_at.isoformat()}), 1, INTENT)
        if timezone.now() < wake_at:
            raise Wait(WaitFor.sleep(wake_at))
        self._write(step, 1, OUTCOME, status=SUCCEEDED, result={"woke_at": timezone.now().isoformat()})
