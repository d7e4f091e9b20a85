"""The journal protocol: how an agent's steps are recorded, replayed and recovered.

Read this file top to bottom; ../docs/journal.md says the same in prose.

An agent is a plain function `fn(ctx, input)`. Everything it does that touches the world goes
through `ctx` (a Context): tool calls, LLM calls, sleeps, the clock, random ids, child runs.
Each of those is a step, numbered seq = 1, 2, 3 ... in the order the agent asks for them. Because
the agent's own code is deterministic apart from what it asks ctx for, running it again from the
top asks for the same steps in the same order; that is how a run resumes after its worker died.

When the agent reaches step seq, the Context looks at what the journal holds for it:

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
     a result; run it again; or fail it). See runs.engine.resolve_step.
3. Nothing: check the contract (a known tool, arguments that fit its schema), write the intent,
   call the tool with its idempotency key (run id and seq, the same on every worker and every
   attempt), write the outcome. A step without side effects (a read, an LLM call, the clock)
   writes only its outcome: one commit.

Every journal write is one SQL statement (WRITE_SQL below) that inserts the row only while the
writer still holds the run's lease at the epoch it claimed (fencing): a worker that was stopped
and came back after another worker took over cannot add a row. The same statement tells the
writer whether an operator asked for a pause or a cancel, which is honoured at the step boundary:
an intent is not written while one is pending, so a paused run never leaves a step in doubt.
"""

import hashlib
import json
import uuid as uuid_module

import psycopg
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timedelta
from typing import Any, Callable

from django.db import DatabaseError, connection
from django.utils import timezone
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from runs import live
from runs.agents import describe
from runs.models import JournalEntry
from tools.models import Rule
from tools.registry import TOOLS, Reconciled

INTENT, OUTCOME = JournalEntry.Phase.INTENT, JournalEntry.Phase.OUTCOME
SUCCEEDED, FAILED, ABANDONED = (
    JournalEntry.Status.SUCCEEDED,
    JournalEntry.Status.FAILED,
    JournalEntry.Status.ABANDONED,
)
K = JournalEntry.Kind


# What the agent sees ---------------------------------------------------------------------------


class ToolError(Exception):
    """A step failed. The agent may catch it and adapt; uncaught, it fails the run."""

    def __init__(self, type, message):
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


# Why a run stops advancing. These are BaseExceptions so that an agent's `except Exception`
# cannot swallow them.


class Suspend(BaseException):
    pass


class Wait(Suspend):
    """The run waits (sleep, child run) without holding a worker."""

    def __init__(self, reason, wake_at=None, child_id=None, approval_id=None):
        super().__init__(reason)
        self.reason, self.wake_at, self.child_id = reason, wake_at, child_id
        self.approval_id = approval_id


class PauseRequested(Suspend):
    pass


class CancelRequested(Suspend):
    pass


class NeedsAttention(Suspend):
    """A person must decide: a step in doubt, or code that no longer matches the journal."""

    def __init__(self, reason, seq):
        super().__init__(reason)
        self.reason, self.seq = reason, seq


class Fenced(Suspend):
    """Another worker holds the run now; this one must stop without writing anything."""


class RunFails(Suspend):
    """The run fails now, whatever the agent would do (a budget is exceeded)."""

    def __init__(self, error):
        super().__init__(error["message"])
        self.error = error


class JournalUnavailable(Suspend):
    """The journal could not be written (the database failed): stop, and let the lease lapse."""


# The pieces ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    run_id: uuid_module.UUID
    owner: str
    epoch: int


@dataclass
class Step:
    """What the agent asks for at one seq."""

    kind: str
    name: str
    args: Any
    call: Callable[[str], Any] | None  # call(idempotency_key) -> JSON result
    effect: str = ""
    # Steps with side effects record their intent before they happen; the rest record only
    # their outcome.
    writes_intent: bool = False
    idempotent: bool = False
    reconcile: Callable | None = None
    # What the intent row stores, where it holds more than identifies the step (a deadline).
    stored_args: Any = None
    # A tool step, checked against the tool's state and permissions before it first runs.
    guarded: bool = False

    @cached_property
    def args_json(self):
        return canonical_json(self.args)

    @cached_property
    def args_hash(self):
        return hash_json(self.args_json)


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
# move of a run out of running goes through runs.models.transition, which locks the row FOR
# UPDATE: that move waits for a write in flight, and a write that waited for the move re-checks
# status and epoch on the new row and inserts nothing. (A claim only takes queued runs, so a
# new epoch always comes after such a move.) Heartbeats do not conflict with the lock.
#
# The intent of a write or delete ("guarded") also locks the freeze state FOR KEY SHARE and is
# refused while a freeze covers the run's agent: see tools/freeze.py for why no write intent can
# be recorded after a freeze has committed.
WRITE_SQL = """
WITH run AS (
    SELECT lease_epoch, lease_owner, status, requested, agent FROM runs_run
    WHERE id = %(run)s::uuid FOR KEY SHARE
), freeze_now AS (
    SELECT COALESCE(NULLIF(f.global_reason, ''), f.agents ->> run.agent, '') AS reason
    FROM tools_freezestate f, run
    WHERE f.id = 1 AND %(guarded)s::boolean
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
      AND (NOT %(guarded)s::boolean OR EXISTS (SELECT 1 FROM freeze_now))
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM inserted),
       run.status = 'running' AND run.lease_epoch = %(epoch)s::bigint
           AND run.lease_owner = %(owner)s::varchar,
       run.requested,
       CASE WHEN %(guarded)s::boolean AND NOT EXISTS (SELECT 1 FROM freeze_now)
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


def _json_or_null(value):
    return None if value is None else canonical_json(value)


# The Context: what an agent's code calls ------------------------------------------------------


class Context:
    def __init__(self, lease: Lease, journal: dict[int, list[Row]], agent=""):
        self.lease = lease
        self.run_id = lease.run_id
        self.journal = journal
        self.agent = agent
        self.seq = 0
        self.calls = Counter()  # tool name -> its steps so far in this run, for caps
        self.rules = {}  # tool name -> (enabled, decision), read once per advance
        self.frozen = None  # the freeze's reason for this agent, read once per advance

    # The API for agents

    def tool(self, name, **arguments):
        """Call a registered tool; returns its result or raises ToolError."""
        tool = TOOLS.get(name)
        if tool is None:
            return self._contract_error(name, arguments, f"unknown tool {name!r}")
        try:
            args = tool.input_model.model_validate(arguments)
        except ValidationError as error:
            return self._contract_error(
                name, arguments, f"arguments for {name!r} are invalid: {describe(error)}"
            )
        return self._step(
            Step(
                kind=K.TOOL,
                name=name,
                args=args.model_dump(mode="json"),
                call=lambda key: _checked_output(tool, tool.call(args, key)),
                effect=tool.effect,
                writes_intent=tool.effect in ("write", "delete"),
                idempotent=tool.idempotent,
                reconcile=(lambda key: tool.reconcile(args, key)) if tool.reconcile else None,
                guarded=True,
            )
        )

    def llm(self, provider, **request):
        """Call a model through a registered provider; replay returns the recorded response."""
        from runs.llm import UnknownProvider, get_provider

        try:
            call = get_provider(provider)
        except UnknownProvider as error:
            return self._contract_error(provider, request, str(error), kind=K.LLM)
        return self._step(Step(kind=K.LLM, name=provider, args=request, call=lambda key: call(**request)))

    def now(self) -> datetime:
        recorded = self._step(Step(kind=K.NOW, name="", args=None, call=lambda key: timezone.now().isoformat()))
        return datetime.fromisoformat(recorded)

    def uuid(self) -> uuid_module.UUID:
        recorded = self._step(Step(kind=K.UUID, name="", args=None, call=lambda key: str(uuid_module.uuid4())))
        return uuid_module.UUID(recorded)

    def sleep(self, seconds):
        """Sleep without holding a worker: the run waits and is woken by a scheduled job."""
        self._sleep(float(seconds))

    def start_child(self, agent, input) -> uuid_module.UUID:
        """Start a child run (once, whatever happens to this worker); returns its id."""
        from runs.agents import InvalidInput, UnknownAgent
        from runs.engine import start_run

        def call(key):
            try:
                child = start_run(
                    agent, input, started_by=f"run:{self.run_id}", parent_id=self.run_id,
                    idempotency_key=f"child-{self.run_id}-{self.seq}",
                )
            except (UnknownAgent, InvalidInput) as error:
                raise ContractViolation(str(error)) from None
            return str(child.id)

        return uuid_module.UUID(self._step(Step(kind=K.CHILD_START, name=agent, args=input, call=call)))

    def wait_child(self, child_id):
        """The child run's output once it has finished; ToolError if it did not succeed."""
        return self._wait_child(child_id)

    def run_child(self, agent, input):
        return self.wait_child(self.start_child(agent, input))

    # The protocol

    def _step(self, step: Step):
        self.seq += 1
        rows = self.journal.get(self.seq)
        if step.guarded:
            self.calls[step.name] += 1
        if not rows:
            if step.guarded:
                self._guard(step)
            return self._execute(step, attempt=1)
        self._check_same_step(step, rows[0])
        last = rows[-1]
        if last.phase == OUTCOME and last.status in (SUCCEEDED, FAILED):
            return self._replay(last)
        if step.guarded:
            self._approved(step)  # a re-run makes the call that was approved, edits included
        if last.phase == OUTCOME:  # abandoned by an operator: run it again
            return self._execute(step, attempt=last.attempt + 1)
        return self._recover_in_doubt(step, last)

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
        if row.status == FAILED:
            raise ToolError(row.error["type"], row.error["message"])
        return row.result

    def _recover_in_doubt(self, step, intent):
        if step.idempotent:
            return self._execute(step, attempt=intent.attempt + 1)
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
                return self._execute(step, attempt=intent.attempt + 1)
        raise NeedsAttention(
            f"step {self.seq} ({step.effect} {step.name!r}) is in doubt: its intent was recorded "
            "and its worker stopped before recording the outcome, so it may or may not have "
            "happened. Decide: it happened (give its result), run it again, or fail it.",
            self.seq,
        )

    def _execute(self, step, attempt):
        if step.writes_intent:
            self._write(step, attempt, INTENT)
        try:
            result = as_json(step.call(self._key()))
        except ContractViolation as error:
            self._write(step, attempt, OUTCOME, status=FAILED, error={"type": "contract", "message": str(error)})
            raise ToolError("contract", str(error)) from None
        except Exception as error:
            failure = {"type": type(error).__name__, "message": str(error)}
            self._write(step, attempt, OUTCOME, status=FAILED, error=failure)
            raise ToolError(failure["type"], failure["message"]) from error
        self._write(step, attempt, OUTCOME, status=SUCCEEDED, result=result)
        return result

    def _guard(self, step):
        """The guardrails after the contract, in DESIGN's order, for a tool step's first run:
        a disabled tool, the permission, the cap on calls per run. (The freeze is checked in
        the statement that writes the intent.) A refusal is journaled like any outcome, so a
        replay refuses again without asking."""
        enabled, decision = self._rules_for(step.name)
        if not enabled:
            self._refuse(step, "contract", f"tool {step.name!r} is disabled")
        if step.effect in ("write", "delete"):
            # DESIGN's order: the freeze before the permission. (Read once per advance; the
            # statement that writes the intent checks it again under its lock.)
            if self.frozen is None:
                from tools.freeze import frozen_reason_for

                self.frozen = frozen_reason_for(self.agent)
            if self.frozen:
                raise Wait(f"frozen: {self.frozen}")
        if decision.rule == Rule.DENY:
            self._refuse(step, "permission_denied",
                         f"tool {step.name!r} is denied to agent {self.agent!r} ({decision.source})")
        if decision.cap is not None and self.calls[step.name] > decision.cap:
            message = (f"budget exceeded: tool {step.name!r} may be called {decision.cap} times a run "
                       f"({decision.source}); this was call {self.calls[step.name]}")
            self._refuse(step, "budget", message, fails_run=True)
        if decision.rule == Rule.REQUIRE_APPROVAL:
            self._await_approval(step)

    def _await_approval(self, step):
        """Wait for a person's decision (tools/approvals.py); go on as they decided."""
        from django.utils import timezone as tz

        from tools import approvals
        from tools.models import ApprovalStatus as A

        approval = approvals.request_for(
            self.run_id, self.seq, tool_name=step.name, agent=self.agent, args=step.args,
            args_hash=step.args_hash,
        )
        if (approval.tool, approval.args_hash) != (step.name, step.args_hash):
            # The request was made for another call at this seq: the code changed under the run.
            self._nondeterminism(step, "an approval was requested for", K.TOOL, approval.tool, approval.args_hash)
        if approval.status == A.PENDING and approval.expires_at <= tz.now():
            approvals.expire_overdue()
            approval.refresh_from_db()
        if approval.status == A.PENDING:
            raise Wait(f"waiting for approval of step {self.seq} ({step.name}), until "
                       f"{approval.expires_at:%Y-%m-%d %H:%M:%S %Z}", approval_id=approval.id)
        if approval.status == A.DENIED:
            self._refuse(step, "denied", f"denied by operator: {approval.reason}")
        if approval.status == A.EXPIRED:
            self._refuse(step, "approval_expired",
                         f"nobody approved the call to {step.name!r} before the request expired")
        self._use_approved_arguments(step, approval)

    def _use_approved_arguments(self, step, approval):
        """Run what was approved (edited arguments, if any); the step keeps its identity."""
        from tools import approvals

        args = approvals.arguments_to_run(approval)
        if args == step.args:
            return
        spec = TOOLS[step.name]
        try:
            model = spec.input_model.model_validate(args)
        except ValidationError as error:
            self._refuse(step, "contract", f"the approved arguments for {step.name!r} are invalid: {describe(error)}")
        step.stored_args = model.model_dump(mode="json")  # the journal keeps secrets, for replay
        step.call = lambda key: _checked_output(spec, spec.call(model, key))

    def _approved(self, step):
        """Edited arguments of an approved step, for a step that runs again after a crash."""
        from tools.models import Approval, ApprovalStatus

        approval = Approval.objects.filter(run_id=self.run_id, seq=self.seq, status=ApprovalStatus.APPROVED).first()
        if approval is not None:
            self._use_approved_arguments(step, approval)

    def _rules_for(self, name):
        if name not in self.rules:
            from tools.models import Tool, ToolPermission

            tool = Tool.objects.filter(name=name).first()
            if tool is None:  # not synced yet: the code's own declaration decides
                spec = TOOLS[name]
                tool = Tool(name=name, effect=spec.effect, compensation=spec.compensation.tool if spec.compensation else "")
                self.rules[name] = (True, ToolPermission.objects.decide_from(tool, [], self.agent))
            else:
                self.rules[name] = (tool.enabled, ToolPermission.objects.decide(tool, self.agent))
        return self.rules[name]

    def _refuse(self, step, type, message, fails_run=False):
        refused = Step(kind=step.kind, name=step.name, args=step.args, call=None, effect=step.effect)
        error = {"type": type, "message": message}
        self._write(refused, 1, OUTCOME, status=FAILED, error=error)
        if fails_run:
            raise RunFails(error)
        raise ToolError(type, message)

    def _contract_error(self, name, arguments, message, kind=K.TOOL):
        """Unknown tool or bad arguments: the step fails at the boundary and is never retried."""

        def refuse(key):
            raise ContractViolation(message)

        # Arguments that are not even JSON are recorded as their text.
        recorded = json.loads(json.dumps(arguments, default=repr))
        return self._step(Step(kind=kind, name=name, args=recorded, call=refuse))

    def _key(self):
        return f"{self.run_id}:{self.seq}"

    def _write(self, step, attempt, phase, *, status="", result=None, error=None, actor_note=""):
        lease = self.lease
        if phase == INTENT:
            stored_args = step.args_json if step.stored_args is None else canonical_json(step.stored_args)
        else:
            # An outcome repeats the arguments only where no intent holds them.
            stored_args = None if step.writes_intent else step.args_json
        inserted, holds_lease, requested, frozen = _run_write_sql(
            {
                "run": lease.run_id, "seq": self.seq, "attempt": attempt, "phase": phase,
                "kind": step.kind, "name": step.name, "effect": step.effect,
                "args": stored_args, "args_hash": step.args_hash,
                "key": self._key() if step.kind == K.TOOL else "",
                "status": status, "result": _json_or_null(result), "error": _json_or_null(error),
                "actor": f"worker:{lease.owner}" + (f" ({actor_note})" if actor_note else ""),
                "epoch": lease.epoch, "owner": lease.owner,
                "guarded": phase == INTENT and step.effect in ("write", "delete"),
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
            raise Wait(f"frozen: {frozen}")
        assert inserted, "the journal row was neither written nor refused"

    # Steps with their own rules

    def _sleep(self, seconds):
        self.seq += 1
        step = Step(kind=K.SLEEP, name="", args={"seconds": seconds}, call=None, writes_intent=True)
        rows = self.journal.get(self.seq)
        if rows:
            self._check_same_step(step, rows[0])
            if rows[-1].phase == OUTCOME:
                return
            wake_at = datetime.fromisoformat(rows[0].args["wake_at"])
        else:
            # The intent carries the deadline, so every replay keeps the first one.
            wake_at = timezone.now() + timedelta(seconds=seconds)
            step.stored_args = {"seconds": seconds, "wake_at": wake_at.isoformat()}
            self._write(step, 1, INTENT)
        if timezone.now() < wake_at:
            raise Wait(f"sleeping until {wake_at.isoformat()}", wake_at=wake_at)
        self._write(step, 1, OUTCOME, status=SUCCEEDED, result={"woke_at": timezone.now().isoformat()})

    def _wait_child(self, child_id):
        from runs.models import Run

        child_id = str(child_id)

        def call(key):
            child = Run.objects.only("status", "output", "error").filter(id=child_id).first()
            if child is None:
                raise ContractViolation(f"there is no child run {child_id}")
            if child.status == "succeeded":
                return child.output
            if child.is_finished:
                message = (child.error or {}).get("message", "")
                raise ChildRunFailed(f"child run {child_id} ended {child.status}" + (f": {message}" if message else ""))
            raise Wait(f"waiting for child run {child_id}", child_id=child_id)

        return self._step(Step(kind=K.CHILD_WAIT, name="", args={"run_id": child_id}, call=call))


def _checked_output(tool, result):
    """A tool with an output model must return what it promises; a result that does not fit is a
    contract error naming the field (the call itself did happen: its intent stays recorded)."""
    if tool.output_model is None:
        return result
    try:
        return tool.output_model.model_validate(result).model_dump(mode="json")
    except ValidationError as error:
        raise ContractViolation(f"the result of {tool.name!r} does not fit its output model: {describe(error)}") from None


class ContractViolation(Exception):
    """Raised inside a step's call when the request breaks the contract; never retried."""


class ChildRunFailed(Exception):
    pass
