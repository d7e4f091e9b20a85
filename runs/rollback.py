"""Rollback: undo a run's completed writes with their compensations, newest first.

The plan is read off the journal: every write or delete that completed, in the run and in its
child runs, newest first (so a child's writes are undone before the parent's earlier steps),
each with the compensation its tool declares and the exact arguments that compensation will
receive (built from the original arguments and result), or "irreversible" where the tool
declares none. A step in doubt must be resolved before anything is undone.

When an operator confirms a plan (runs.services.roll_back), the plan is frozen into the input of
a rollback run: a run of the built-in agent below, which calls each compensation as a tool step
of its own. So compensations are journaled, fenced and replayed like any step: a worker that
dies mid-rollback is followed by another that finishes it, with no compensation twice (an
idempotent compensation runs again with the same key; any other goes to a person, as any write
in doubt does). When the rollback run ends, the original run becomes compensated, or
compensation_failed with the step that needs a person (runs.moves).
"""

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from django.utils import timezone
from pydantic import BaseModel

from runs import moves
from runs.actors import Actor
from runs.agents import ROLLBACK_AGENT, agent
from runs.budgets import Budget
from runs.models import JournalEntry, Run, RunStatus
from runs.recorder import ToolError, canonical_json, hash_json
from tools.models import Approval, ApprovalStatus
from tools.models import Redactor
from tools.registry import TOOLS, WRITING_EFFECTS, ContractViolation

S = RunStatus
# Where a rollback may start: DESIGN's "failed | cancelled | paused | needs_attention".
ROLLBACK_FROM = {S.FAILED, S.CANCELLED, S.PAUSED, S.NEEDS_ATTENTION}

COMPENSATE, IRREVERSIBLE, IN_DOUBT = "compensate", "irreversible", "in_doubt"


@dataclass(frozen=True)
class PlanStep:
    run_id: str
    seq: int
    tool: str
    effect: str
    action: str  # compensate, irreversible, in_doubt
    compensation: str = ""  # the tool that undoes it
    args: dict | None = None  # what the compensation receives (secrets included; never shown)
    shown_args: dict | None = None  # the same, as people may see it
    why: str = ""  # why it cannot be undone, where it cannot

    @property
    def key(self):
        """How the page names it (checkboxes of acknowledged irreversible steps)."""
        return f"{self.run_id}:{self.seq}"


@dataclass(frozen=True)
class Plan:
    run_id: str
    after_seq: int | None
    steps: list

    @property
    def compensations(self):
        return [step for step in self.steps if step.action == COMPENSATE]

    @property
    def irreversible(self):
        return [step for step in self.steps if step.action == IRREVERSIBLE]

    @property
    def in_doubt(self):
        return [step for step in self.steps if step.action == IN_DOUBT]

    @property
    def digest(self):
        """What the operator was shown: a confirmation is bound to it."""
        text = json.dumps([asdict(step) for step in self.steps], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def plan_for(run, after_seq=None):
    """The rollback plan of a run: its completed writes (and its children's) after `after_seq`
    (all of them when None), newest first. A fork's own writes start after the step it was
    forked at: the steps it holds up to there are its origin's, undone by rolling the origin
    back."""
    found = []  # (completed at, run id, seq, PlanStep)
    since = max(after_seq or 0, run.forked_at_seq or 0)
    for member, since in _tree(run, since or None):
        found += _writes_of(member, since)
    found.sort(key=lambda item: (item[0], item[1], item[2]), reverse=True)
    steps = [step for *_, step in found]
    # What people see of each compensation's arguments: one query for the whole plan.
    redact = Redactor(step.compensation for step in steps if step.args is not None)
    steps = [replace(step, shown_args=redact(step.compensation, step.args)) if step.args is not None else step
             for step in steps]
    return Plan(run_id=str(run.id), after_seq=after_seq, steps=steps)


def _tree(run, after_seq):
    """The run (its steps after after_seq) and its descendants started after it (all steps)."""
    members = [(run, after_seq or 0)]
    starts = JournalEntry.objects.filter(run=run, kind=JournalEntry.Kind.CHILD_START, seq__gt=after_seq or 0)
    child_ids = [row.result for row in starts.filter(status=JournalEntry.Status.SUCCEEDED) if row.result]
    level = list(Run.objects.filter(id__in=child_ids))
    for _ in range(20):  # deep enough for any tree people build; a cycle cannot exist
        if not level:
            break
        members += [(child, 0) for child in level]
        level = list(Run.objects.filter(parent__in=level, rollback_of__isnull=True))
    return members


def _writes_of(run, since):
    rows = JournalEntry.objects.filter(
        run=run, kind=JournalEntry.Kind.TOOL, effect__in=WRITING_EFFECTS, seq__gt=since
    ).order_by("seq", "attempt", "id")
    by_seq = {}
    for row in rows:
        by_seq.setdefault(row.seq, []).append(row)
    found = []
    for seq, step_rows in by_seq.items():
        last = step_rows[-1]
        intent = next((r for r in step_rows if r.phase == JournalEntry.Phase.INTENT), None)
        if JournalEntry.is_open_call(last):
            step = PlanStep(str(run.id), seq, last.name, last.effect, IN_DOUBT,
                            why="in doubt: resolve it first (it may or may not have happened)")
            found.append((last.created_at, str(run.id), seq, step))
        elif last.status == JournalEntry.Status.SUCCEEDED:
            args = intent.args if intent is not None else last.args
            found.append((last.created_at, str(run.id), seq, _undo(run, seq, last, args)))
        elif _may_have_acted(step_rows):
            # Its attempts failed, but one failed on the way (a timeout, an answer lost): the
            # write may have taken effect, and nothing says so. Undoing it blindly could undo
            # what never happened, so a person checks it and acknowledges it, as for an
            # irreversible step.
            step = PlanStep(str(run.id), seq, last.name, last.effect, IRREVERSIBLE,
                            why="may have happened: its attempts failed on the way, so the rollback cannot "
                                "tell whether it took effect and does not undo it; check it by hand")
            found.append((last.created_at, str(run.id), seq, step))
    return found


def _may_have_acted(step_rows):
    """Whether a write whose last attempt did not succeed made a call that failed on the way."""
    return any(row.phase == JournalEntry.Phase.OUTCOME and (row.error or {}).get("transient")
               and not (row.error or {}).get("not_called") for row in step_rows)


def _undo(run, seq, outcome, args):
    spec = TOOLS.get(outcome.name)
    base = dict(run_id=str(run.id), seq=seq, tool=outcome.name, effect=outcome.effect)
    if spec is None:
        return PlanStep(**base, action=IRREVERSIBLE, why="irreversible: its tool is no longer in the code")
    if spec.compensation is None:
        return PlanStep(**base, action=IRREVERSIBLE, why="irreversible: cannot be undone")
    compensation = spec.compensation.tool
    try:
        built = spec.compensation.build_args(args, outcome.result)
        undo_spec = TOOLS[compensation]
        checked = undo_spec.parse(built).model_dump(mode="json")
    except (ContractViolation, KeyError, TypeError, ValueError) as error:
        return PlanStep(**base, action=IRREVERSIBLE, compensation=compensation,
                        why=f"irreversible: the arguments of {compensation!r} could not be built ({error})")
    return PlanStep(**base, action=COMPENSATE, compensation=compensation, args=checked)


# The built-in agent ------------------------------------------------------------------------


class Compensation(BaseModel):
    run_id: str
    seq: int
    tool: str
    compensation: str
    args: dict


class Resolved(BaseModel):
    """A compensation an operator settled by hand after it failed: done (with a result), or
    skipped (with a reason). Kept in the next rollback's input, for the record."""

    run_id: str
    seq: int
    compensation: str
    how: str  # done, skipped
    result: object = None
    reason: str = ""
    by: str


class RollbackInput(BaseModel):
    """The plan as the operator confirmed it, frozen: a replay asks for the same steps."""

    rollback_of: str
    compensations: list[Compensation]
    resolved: list[Resolved] = []


class Undone(BaseModel):
    run_id: str
    seq: int
    compensation: str


class RollbackOutcome(BaseModel):
    compensated: list[Undone]
    # The compensation that failed, and the error; the rest of the plan was not attempted.
    failed: Undone | None = None
    error: str = ""
    not_attempted: list[Undone] = []


# A plan may be long, and may undo several writes with the same compensation and the same
# arguments (a deposit made twice, taken back twice): that is no loop.
PLAN_BUDGET = Budget(tool_calls=None, repeats=None)


@agent(ROLLBACK_AGENT, budget=PLAN_BUDGET)
def rollback(ctx, plan: RollbackInput) -> RollbackOutcome:
    """Call each compensation in the order of the plan; stop at the first that fails, since the
    steps before it in the plan were undone on the assumption that later ones were."""
    done = []
    for index, step in enumerate(plan.compensations):
        undone = Undone(run_id=step.run_id, seq=step.seq, compensation=step.compensation)
        try:
            ctx.tool(step.compensation, **step.args)
        except ToolError as error:
            rest = [Undone(run_id=s.run_id, seq=s.seq, compensation=s.compensation)
                    for s in plan.compensations[index + 1:]]
            return RollbackOutcome(compensated=done, failed=undone, error=error.message, not_attempted=rest)
        done.append(undone)
    return RollbackOutcome(compensated=done)


POLICY = Actor.system("rollback-policy")


def begin(run, plan, *, actor, reason, during_freeze=False):
    """The run becomes compensating and a rollback run starts with the plan, frozen. Called in
    the caller's transaction (the operator's confirmation, or the run's failing move)."""
    moves.move(run.id, S.COMPENSATING, actor=actor, reason=f"rolling back: {reason}")
    data = rollback_input(run, plan)
    undo_run = moves.start_run(ROLLBACK_AGENT, data, started_by=actor, rollback_of_id=run.id,
                               during_freeze=during_freeze)
    _approve_as_confirmed(undo_run, data["compensations"], actor)
    return undo_run


def _approve_as_confirmed(undo_run, compensations, actor):
    """The confirmation of a plan is the approval of each compensation in it: one approved
    request per step of the rollback run (step N calls the plan's Nth compensation), so the
    policy's approval rule finds its answer and asks nobody again."""
    now = timezone.now()
    redact = Redactor(step["compensation"] for step in compensations)
    Approval.objects.bulk_create([
        Approval(
            run=undo_run, seq=seq, tool=step["compensation"], agent=ROLLBACK_AGENT,
            effect=TOOLS[step["compensation"]].effect, args=redact(step["compensation"], step["args"]),
            private_args=step["args"], args_hash=hash_json(canonical_json(step["args"])),
            started_by=actor.label, status=ApprovalStatus.APPROVED, expires_at=now,
            decided_by=actor.label, decided_at=now, reason="approved by confirming the rollback plan",
        )
        for seq, step in enumerate(compensations, start=1)
    ])


def roll_back_on_failure(run_id):
    """For an agent declared with on_failure="rollback", once its run has failed: roll it back
    with the plan an operator would be shown, irreversible steps left as they are. A plan with a
    step in doubt, or with nothing to compensate, leaves the run failed, and its record says why."""
    run = Run.objects.get(id=run_id)
    plan = plan_for(run)
    if plan.in_doubt or not plan.compensations:
        why = ("a step is in doubt: resolve it, then roll back from the run page" if plan.in_doubt
               else "nothing to compensate")
        run.events.create(kind="request", actor=POLICY.label, reason=f"no automatic rollback: {why}")
        return None
    return begin(run, plan, actor=POLICY, reason="the agent rolls back when it fails")


@dataclass(frozen=True)
class Stopped:
    """Where the last rollback of a run stopped: the compensation that failed, and the rest."""

    rollback_run: Run
    failed: dict  # a compensation of the plan: run_id, seq, tool, compensation, args
    error: str
    remaining: list  # the failed compensation first, then those not attempted
    resolved: list  # what operators settled by hand in earlier rounds


def stopped_at(run):
    """Where the run's last rollback stopped, or None (no rollback, or one that did not stop)."""
    last = run.rollbacks.order_by("-created_at", "-id").first()
    if last is None or run.status != S.COMPENSATION_FAILED:
        return None
    planned = last.input["compensations"]
    if last.status == S.SUCCEEDED and (last.output or {}).get("failed"):
        done, error = len(last.output["compensated"]), last.output.get("error", "")
    else:  # the rollback run itself failed or was cancelled: its journal says how far it got
        done = JournalEntry.objects.filter(run=last, kind=JournalEntry.Kind.TOOL, phase=JournalEntry.Phase.OUTCOME,
                                           status=JournalEntry.Status.SUCCEEDED).count()
        error = (last.error or {}).get("message", f"the rollback run ended {last.status}")
    remaining = planned[done:]
    if not remaining:
        return None
    return Stopped(last, remaining[0], error, remaining, last.input.get("resolved", []))


def go_on(run, stopped, *, retry, resolved, actor, reason):
    """Resume a rollback that stopped: with the failed compensation again (retry), or without it
    (settled by hand, recorded in `resolved`). Nothing left: the run is compensated."""
    remaining = stopped.remaining if retry else stopped.remaining[1:]
    record = [*stopped.resolved, *([] if resolved is None else [resolved])]
    if not remaining:
        return moves.move(run.id, S.COMPENSATED, actor=actor, expect={S.COMPENSATION_FAILED},
                          reason=f"the last compensation was settled by hand: {reason}"), None
    moved = moves.move(run.id, S.COMPENSATING, actor=actor, expect={S.COMPENSATION_FAILED},
                       reason=f"rolling back the rest: {reason}")
    data = {"rollback_of": str(run.id), "compensations": remaining, "resolved": record}
    undo_run = moves.start_run(ROLLBACK_AGENT, data, started_by=actor, rollback_of_id=run.id)
    _approve_as_confirmed(undo_run, remaining, actor)
    return moved, undo_run


def rollback_input(run, plan):
    return {
        "rollback_of": str(run.id),
        "compensations": [
            {"run_id": s.run_id, "seq": s.seq, "tool": s.tool, "compensation": s.compensation, "args": s.args}
            for s in plan.compensations
        ],
    }
