"""What operators do to runs: pause, resume, cancel, resolve a step in doubt, roll back.

Each function is the one path for its action, whichever door it comes through (a page, the
command line, the API to come): it checks what the action needs, acts, and writes the audit
entry in the same transaction, in the name of the Actor it is given. A refusal raises
ActionRefused with a message that says why, and changes nothing.
"""

import math

from django.db import transaction
from django.db.models import Max
from pydantic import ValidationError

from runs import budgets, live, moves, rollback
from runs.agents import AGENTS, ROLLBACK_AGENT, InvalidInput, UnknownAgent, describe
from runs.models import AuditEntry, JournalEntry, ParkedBy, Requested, Run, RunStatus, WaitKind
from runs.roles import role_needed
from tools.registry import TOOLS

S = RunStatus


class ActionRefused(Exception):
    """The run's state does not allow the action, or its arguments are wrong; nothing changed."""


def pause(run_id, *, actor, reason=""):
    """A running run stops at its next step boundary; a queued or waiting one at once."""
    return _stop(run_id, Requested.PAUSE, "pause", actor=actor, reason=reason)


def cancel(run_id, *, actor, reason):
    """Like pause, but for good. A person says why."""
    if not reason.strip():
        raise ActionRefused("cancelling needs a reason: say why the run should stop")
    return _stop(run_id, Requested.CANCEL, "cancel", actor=actor, reason=reason)


def _stop(run_id, request, action, *, actor, reason):
    with transaction.atomic():
        try:
            moved = moves.request_stop(run_id, request, actor=actor, reason=reason)
        except moves.IllegalTransition as error:
            raise ActionRefused(str(error)) from None
        AuditEntry.record(actor, action, run_id=run_id, reason=reason)
    return moved


def resume(run_id, *, actor, reason=""):
    with transaction.atomic():
        moved = moves.move(run_id, S.QUEUED, actor=actor, reason=reason or "resumed", expect={S.PAUSED})
        if not moved.done:
            raise ActionRefused(f"only a paused run can be resumed; this one is {moved.run.get_status_display().lower()}")
        AuditEntry.record(actor, "resume", run_id=run_id, reason=reason)
    return moved


class Resolution:
    """What an operator decides about a step in doubt."""

    HAPPENED = "happened"  # the call took effect; the operator's result is what the agent receives
    RUN_AGAIN = "run_again"  # it did not; it runs again with the same idempotency key
    FAIL = "fail"  # the agent receives an error with the operator's reason
    ALL = (HAPPENED, RUN_AGAIN, FAIL)


def resolve_step(run_id, seq, resolution, *, actor, result=None, reason=""):
    """An operator's decision on the step in doubt; the run then goes on. Returns the run."""
    reason = reason.strip()
    if resolution not in Resolution.ALL:
        raise ActionRefused(f"decision must be one of {', '.join(Resolution.ALL)}, not {resolution!r}")
    if resolution == Resolution.FAIL and not reason:
        raise ActionRefused("failing a step needs a reason: the agent receives it as the tool's error")
    if resolution == Resolution.RUN_AGAIN and not reason:
        raise ActionRefused("running a step again needs a reason: say how you know it did not happen")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.status != S.NEEDS_ATTENTION:
            why = f" ({run.status_reason})" if run.status_reason else ""
            raise ActionRefused(f"run {run_id} is {run.get_status_display().lower()}{why}, not waiting for a decision on a step")
        if run.parked_by == ParkedBy.RETRIES:
            return _resolve_out_of_attempts(run, seq, resolution, actor=actor, reason=reason)
        intent = JournalEntry.in_doubt(run_id)
        if intent is None:
            raise ActionRefused(
                f"no step of run {run_id} is in doubt: {run.status_reason or 'it needs attention for another reason'}"
            )
        if intent.seq != seq:
            raise ActionRefused(f"step {seq} is not in doubt; step {intent.seq} is")
        return _record_decision(run, intent, intent.attempt, resolution, actor=actor, reason=reason, result=result)


def _record_decision(run, row, attempt, resolution, *, actor, reason, result=None):
    """An operator's decision on step row.seq, recorded as its outcome at `attempt` (the attempt in
    doubt; or, for a step out of attempts, the next one, which makes no call), with its event,
    its audit entry and the run's move back to the queue. Called under the run's lock."""
    status, outcome, error = {
        Resolution.HAPPENED: (JournalEntry.Status.SUCCEEDED, result, None),
        Resolution.RUN_AGAIN: (JournalEntry.Status.ABANDONED, None, None),
        Resolution.FAIL: (JournalEntry.Status.FAILED, None,
                          {"type": "failed_by_operator", "message": f"failed by operator: {reason}"}),
    }[resolution]
    if error is not None and attempt > row.attempt:
        error["not_called"] = True
    JournalEntry.objects.create(
        run_id=run.id, seq=row.seq, attempt=attempt, phase=JournalEntry.Phase.OUTCOME,
        kind=row.kind, name=row.name, effect=row.effect, args_hash=row.args_hash,
        idempotency_key=row.idempotency_key, status=status, result=outcome, error=error,
        actor=actor.label,
    )
    run.events.create(kind="resolution", actor=actor.label, reason=reason,
                      details={"seq": row.seq, "decision": resolution})
    moved = moves.move(run.id, S.QUEUED, actor=actor, reason=f"step {row.seq} resolved: {resolution}")
    AuditEntry.record(actor, f"resolve_{resolution}", run_id=run.id, reason=reason,
                      details={"seq": row.seq, "result": result})
    return moved.run


def _last_attempt(run_id, seq):
    return (JournalEntry.objects.filter(run_id=run_id, seq=seq).order_by("-attempt", "-id").first())


def _resolve_out_of_attempts(run, seq, resolution, *, actor, reason):
    """A step whose attempts ran out: try it again (a fresh round of attempts), or fail it (the
    agent receives the operator's reason as the tool's error). Its calls failed, so "it
    happened" is not a decision here. Called under the run's lock."""
    last = _last_attempt(run.id, seq)
    if last is None or last.status != JournalEntry.Status.RETRY or not (last.error or {}).get("exhausted"):
        raise ActionRefused(f"step {seq} of run {run.id} has not run out of attempts")
    if resolution == Resolution.HAPPENED:
        raise ActionRefused(f"step {seq} failed at each of its attempts, so it did not happen: retry it, or fail it")
    if resolution == Resolution.RUN_AGAIN:
        return _grant_retry(run, last, actor=actor, reason=reason).run
    return _record_decision(run, last, last.attempt + 1, Resolution.FAIL, actor=actor, reason=reason)


def retry_step(run_id, seq, *, actor, reason=""):
    """Retry now: a step waiting out its backoff (or its tool's open breaker) is tried at once; a
    step whose attempts ran out gets a fresh round of them. Either way the next attempt skips the
    wait, the breaker and the run's budgets (a person decided), and counts in the budgets."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        last = _last_attempt(run_id, seq)
        waiting = run.status == S.WAITING and run.wait_kind == WaitKind.RETRY and run.wait_ref == str(seq)
        parked = (run.status == S.NEEDS_ATTENTION and run.parked_by == ParkedBy.RETRIES and last is not None
                  and last.status == JournalEntry.Status.RETRY and (last.error or {}).get("exhausted"))
        if not (waiting or parked):
            where = run.status_reason or run.get_status_display().lower()
            raise ActionRefused(f"step {seq} of run {run_id} is not waiting to be tried again ({where})")
        return _grant_retry(run, last, actor=actor, reason=reason, seq=seq)


def _grant_retry(run, last, *, actor, reason, seq=None):
    seq = last.seq if last is not None else seq
    after = last.attempt if last is not None else 0
    Run.objects.filter(id=run.id).update(retry_grant_seq=seq, retry_grant_after=after)
    run.events.create(kind="resolution", actor=actor.label, reason=reason,
                      details={"seq": seq, "decision": "retry_now", "after_attempt": after})
    why = f"step {seq}: retry now, by {actor.name or actor.label}"
    if run.status == S.WAITING:
        moved = moves.wake(run.id, WaitKind.RETRY, seq, actor=actor, reason=why)
    else:
        moved = moves.move(run.id, S.QUEUED, actor=actor, reason=why)
    AuditEntry.record(actor, "retry_step", run_id=run.id, reason=reason,
                      details={"seq": seq, "after_attempt": after})
    return moved


def raise_budget(run_id, limits, *, actor, reason=""):
    """Raise some of a run's budget limits ({name: limit, or None for no limit}); a run parked by
    a budget or a loop goes on at once. Lowering a limit is refused (it would only park the run)."""
    try:
        limits = budgets.checked_limits(limits, "the new budget")
    except budgets.InvalidBudget as error:
        raise ActionRefused(str(error)) from None
    if not limits:
        raise ActionRefused("say which budget to raise, and to what")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        if run.is_finished:
            raise ActionRefused(f"run {run_id} has finished ({run.status}); its budget no longer matters")
        # A run started before budgets existed holds none of its own: its agent's defaults apply.
        declared = AGENTS.get(run.agent)
        before = budgets.limits_for(declared.budget if declared else None, run.budget)
        for key, limit in limits.items():
            old = before.get(key)
            if limit is not None and (old is None or limit < old):
                raise ActionRefused(f"budget {key} can only be raised: it is {old if old is not None else 'unlimited'}, "
                                    f"not {limit}")
        run.budget = {**before, **limits}
        run.save(update_fields=["budget", "updated_at"])
        run.events.create(kind="resolution", actor=actor.label, reason=reason,
                          details={"decision": "raise_budget", "before": before, "after": run.budget})
        AuditEntry.record(actor, "raise_budget", run_id=run_id, reason=reason,
                          details={"before": before, "after": run.budget})
        if run.status == S.NEEDS_ATTENTION and run.parked_by in (ParkedBy.BUDGET, ParkedBy.LOOP):
            moves.move(run_id, S.QUEUED, actor=actor, reason=f"budget raised by {actor.name or actor.label}; going on")
        else:
            live.changed(run_id)  # no move to announce it: the run page shows the new limits
    return Run.objects.get(id=run_id)


UNLIMITED = ("none", "unlimited")


def limits_from_text(texts):
    """Budget limits as a person types them ({"retries": "20", "cost_usd": "2.5",
    "llm_tokens": "none"}), for raise_budget: the page's form and `manage.py raise_budget` read
    them alike. ActionRefused names the budget whose figure is not one."""
    limits = {}
    for key, text in texts.items():
        if key not in budgets.KEYS:
            raise ActionRefused(f"there is no budget {key!r} (the budgets: {', '.join(budgets.KEYS)})")
        text = text.strip().lower()
        if text in UNLIMITED:
            limits[key] = None
            continue
        try:
            limit = float(text) if key == "cost_usd" else int(text)
        except ValueError:
            limit = math.nan
        if not math.isfinite(limit):  # "inf" and "nan" parse, and JSON cannot hold them
            kind = "a number" if key == "cost_usd" else "a whole number"
            raise ActionRefused(f"budget {key} must be {kind}, or none for no limit, not {text!r}")
        limits[key] = limit
    return limits


def available_actions(run):
    """The operator actions the run's state allows now, read off the allowed moves (the run
    page shows a button for each that the user may also take)."""
    can_move_to = moves.TRANSITIONS[run.status]
    return {
        "pause": S.PAUSED in can_move_to and run.requested == Requested.NOTHING,
        "resume": run.status == S.PAUSED,
        "cancel": S.CANCELLED in can_move_to and run.requested != Requested.CANCEL,
        "resolve": run.status == S.NEEDS_ATTENTION and run.parked_by != ParkedBy.RETRIES
        and run.parked_by not in (ParkedBy.BUDGET, ParkedBy.LOOP),
        "retry_step": (run.status == S.WAITING and run.wait_kind == WaitKind.RETRY)
        or (run.status == S.NEEDS_ATTENTION and run.parked_by == ParkedBy.RETRIES),
        "fail_step": run.status == S.NEEDS_ATTENTION and run.parked_by == ParkedBy.RETRIES,
        "raise_budget": not run.is_finished,
        "rollback": run.status in rollback.ROLLBACK_FROM and not run.rollback_of_id,
        "rollback_resolve": run.status == S.COMPENSATION_FAILED,
        "cancel_and_rollback": S.CANCELLED in can_move_to and run.requested != Requested.CANCEL
        and run.status not in rollback.ROLLBACK_FROM and not run.rollback_of_id,
        "run_again": run.is_finished and not run.rollback_of_id,
    }


def roll_back(run_id, *, actor, reason, shown_digest, acknowledged=(), after_seq=None, during_freeze=False):
    """Start the rollback of a run, as its plan was shown: the run becomes compensating and a
    rollback run (runs/rollback.py) undoes its writes. The confirmation counts as the approval
    of each compensation in the plan, audited as such. `acknowledged` names the irreversible
    steps the operator ticked (PlanStep.key). With during_freeze, the rollback's writes go on
    while a freeze holds: only an actor who may set and lift freezes may ask it. Returns the
    rollback run."""
    reason = reason.strip()
    if not reason:
        raise ActionRefused("rolling back needs a reason: say what went wrong")
    if during_freeze and not (actor.user is not None and actor.user.has_perm("tools.freeze_writes")):
        raise ActionRefused("only an admin who may set and lift freezes may let a rollback run during a freeze")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        plan = rollback_plan(run, after_seq)
        if plan.digest != shown_digest:
            raise ActionRefused("the plan changed since it was shown (a step completed or was resolved); look at it again")
        missing = [step for step in plan.irreversible if step.key not in set(acknowledged)]
        if missing:
            names = ", ".join(f"step {step.seq} ({step.tool})" for step in missing)
            raise ActionRefused(f"acknowledge each step that cannot be undone first: {names}")
        undo_run = rollback.begin(run, plan, actor=actor, reason=reason, during_freeze=during_freeze)
        AuditEntry.record(actor, "rollback", run_id=run.id, reason=reason, details={
            "rollback_run": str(undo_run.id), "after_seq": after_seq,
            "irreversible_acknowledged": [step.key for step in plan.irreversible],
            "during_freeze": during_freeze,
        })
        for step in plan.compensations:
            AuditEntry.record(actor, "approval_approved", run_id=undo_run.id, reason=f"part of the rollback: {reason}",
                              details={"compensation": step.compensation, "undoes": step.key,
                                       "args": step.shown_args})
    return undo_run


def rollback_plan(run, after_seq=None):
    """The plan the rollback page shows and a confirmation is checked against; ActionRefused
    says why there is none to confirm."""
    if run.rollback_of_id:
        raise ActionRefused("this run is itself a rollback and cannot be rolled back; resolve its steps instead")
    if run.status == S.COMPENSATING:
        raise ActionRefused("a rollback of this run is already under way")
    if run.status not in rollback.ROLLBACK_FROM:
        hint = " cancel it first" if run.status in (S.QUEUED, S.RUNNING, S.WAITING) else ""
        raise ActionRefused(f"a {run.get_status_display().lower()} run cannot be rolled back;"
                            f"{hint or ' only a failed, cancelled, paused or attention-needing run can'}")
    last_seq = JournalEntry.objects.filter(run=run).order_by("-seq").values_list("seq", flat=True).first() or 0
    if after_seq is not None and not 0 < after_seq <= last_seq:
        raise ActionRefused(f"run {run.id} has no step {after_seq} (its steps are 1 to {last_seq})")
    plan = rollback.plan_for(run, after_seq)
    if plan.in_doubt:
        names = ", ".join(f"step {step.seq} ({step.tool})" for step in plan.in_doubt)
        raise ActionRefused(f"resolve the steps in doubt first: {names}")
    if not plan.steps:
        where = f" after step {after_seq}" if after_seq else ""
        raise ActionRefused(f"nothing to undo{where}: the run completed no write")
    return plan


class RollbackResolution:
    """What an operator does about the compensation a rollback stopped at."""

    RETRY = "retry"  # call it again (a new rollback run, from that step on)
    DONE = "done"  # it took effect after all (the operator's result is recorded); go on
    SKIP = "skip"  # leave it undone (the reason is recorded); go on
    ALL = (RETRY, DONE, SKIP)


def resolve_rollback(run_id, resolution, *, actor, reason="", result=None):
    """Go on with a rollback that stopped at a failed compensation. Returns the next rollback
    run, or None when nothing was left to run (the run is then compensated)."""
    reason = reason.strip()
    if resolution not in RollbackResolution.ALL:
        raise ActionRefused(f"decision must be one of {', '.join(RollbackResolution.ALL)}, not {resolution!r}")
    if resolution == RollbackResolution.SKIP and not reason:
        raise ActionRefused("skipping a compensation needs a reason: its write stays done")
    if resolution == RollbackResolution.DONE and result is None:
        raise ActionRefused("marking a compensation done needs its result: what it did")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(id=run_id)
        stopped = rollback.stopped_at(run)
        if stopped is None:
            raise ActionRefused(f"run {run_id} is {run.get_status_display().lower()}, not a rollback stopped at a failed step")
        failed = stopped.failed
        settled = None if resolution == RollbackResolution.RETRY else {
            "run_id": failed["run_id"], "seq": failed["seq"], "compensation": failed["compensation"],
            "how": "done" if resolution == RollbackResolution.DONE else "skipped",
            "result": result, "reason": reason, "by": actor.label,
        }
        _, next_run = rollback.go_on(run, stopped, retry=resolution == RollbackResolution.RETRY,
                                     resolved=settled, actor=actor, reason=reason or resolution)
        AuditEntry.record(actor, f"rollback_{resolution}", run_id=run.id, reason=reason, details={
            "step": f"{failed['run_id']}:{failed['seq']}", "compensation": failed["compensation"],
            "result": result, "next_rollback_run": str(next_run.id) if next_run else None,
        })
    return next_run


# Fork from a step --------------------------------------------------------------------------------

NOT_EDITED = object()  # fork_run's `result` when the operator keeps step N's recorded result


def fork_run(run_id, seq, *, actor, result=NOT_EDITED, reason):
    """Start a new run of the run's agent, with its input, whose journal holds the run's rows of
    steps 1..seq (step seq's result replaced by `result` when given); returns the new run.

    The rows are copied (the journal is append-only, so copying is inserting), with their
    idempotency keys: a replay returns their results and never calls them again. The agent goes
    on from step seq + 1, whose keys are the new run's. The origin is not touched.
    """
    reason = reason.strip()
    edited = result is not NOT_EDITED
    if not reason:
        raise ActionRefused("forking needs a reason: say why the run should go on differently from this step")
    with transaction.atomic():
        origin = Run.objects.get(id=run_id)
        if origin.rollback_of_id is not None:
            raise ActionRefused(f"run {run_id} is a rollback run: it undoes another run's writes, and cannot be forked")
        rows = list(JournalEntry.objects.filter(run_id=run_id, seq__lte=seq).order_by("seq", "attempt", "id"))
        _check_fork_point(origin, seq, rows)
        last = rows[-1]  # step seq's final outcome: what a replay returns
        if edited:
            result = _checked_edit(last, result)
        fork = _start_fork(origin, seq, actor=actor, reason=reason, edited=edited)
        JournalEntry.objects.bulk_create([
            JournalEntry(
                run=fork, seq=row.seq, attempt=row.attempt, phase=row.phase, kind=row.kind,
                name=row.name, effect=row.effect, args=row.args, args_hash=row.args_hash,
                idempotency_key=row.idempotency_key, status=row.status, error=row.error,
                result=result if edited and row is last else row.result,
                actor=actor.label if edited and row is last else row.actor,
            )
            for row in rows
        ])
        AuditEntry.record(actor, "fork", run_id=run_id, reason=reason,
                          details={"seq": seq, "edited": edited, "fork": str(fork.id)})
    return fork


def _check_fork_point(origin, seq, rows):
    """Steps 1..seq exist and each is complete: its last row an outcome that succeeded or failed."""
    last_seq = JournalEntry.objects.filter(run_id=origin.id).aggregate(last=Max("seq"))["last"] or 0
    if last_seq == 0:
        raise ActionRefused(f"run {origin.id} has no steps yet: there is nothing to fork from")
    if not 1 <= seq <= last_seq:
        raise ActionRefused(f"run {origin.id} has no step {seq}: its steps are 1 to {last_seq}")
    last_rows = {row.seq: row for row in rows}  # rows are in order: the last of each seq wins
    for step in range(1, seq + 1):
        row = last_rows.get(step)
        if row is None:
            raise ActionRefused(f"step {step} of run {origin.id} has no journal rows, so the fork could not replay it")
        if row.phase != JournalEntry.Phase.OUTCOME:
            raise ActionRefused(
                f"step {step} is not complete: its intent is recorded and its outcome is not (the "
                "call is under way, or in doubt); fork from an earlier step, or once it is decided"
            )
        if row.status == JournalEntry.Status.ABANDONED:
            raise ActionRefused(
                f"step {step} is not complete: an operator decided its last attempt did not happen, "
                "and it has not run again yet"
            )


def _checked_edit(outcome, result):
    """The operator's result for the step, as the tool's output model would record it."""
    if outcome.kind != JournalEntry.Kind.TOOL:
        raise ActionRefused(
            f"step {outcome.seq} is not a tool step (its kind is {JournalEntry.Kind(outcome.kind).label.lower()}): "
            "only a tool step's result can be edited; fork without an edited result"
        )
    if outcome.status != JournalEntry.Status.SUCCEEDED:
        raise ActionRefused(
            f"step {outcome.seq} failed, so it has no result to edit: fork from it without an edit, "
            "or from the step before it"
        )
    spec = TOOLS.get(outcome.name)
    if spec is None:
        raise ActionRefused(f"tool {outcome.name!r} is no longer registered, so an edited result cannot be checked")
    if spec.output_model is None:
        return result
    try:
        return spec.output_model.model_validate(result).model_dump(mode="json")
    except ValidationError as error:
        raise ActionRefused(f"the edited result does not fit the output model of {outcome.name!r}: {describe(error)}") from None


def _start_fork(origin, seq, *, actor, reason, edited):
    try:
        return moves.start_fork(origin, seq, started_by=actor, reason=reason,
                                details={"forked_from": str(origin.id), "seq": seq, "edited": edited})
    except (UnknownAgent, InvalidInput) as error:
        raise ActionRefused(f"the run's agent cannot start again: {error}") from None


# Starting a run, in a person's name --------------------------------------------------------------


# Who may start a run in a person's name: operators and admins (runs/roles.py).
START_PERMISSION = "runs.start_run"


def start_run_by(agent_name, input, *, actor, idempotency_key=None, budget=None):
    """Start a run of an agent in a person's name (the start form, or a command that names a
    user), audited as `start_run`; returns the run. The same idempotency key with the same input
    returns the run it started, audited once. `budget` overrides some of the agent's budget
    limits ({name: limit or None}), and the audit entry records it. ActionRefused says what is
    wrong: an unknown agent, an input that does not fit the agent's model (each field named), a
    bad budget, a key already used."""
    return _start_audited(agent_name, input, actor=actor, idempotency_key=idempotency_key,
                          action="start_run", details={"budget": budget} if budget else {}, budget=budget)


def run_again(run_id, *, actor, idempotency_key=None):
    """Start a new run of a finished run's agent with the same input, audited as `run_again` on
    the new run (with the run it repeats); returns the new run. The finished run is not touched."""
    run = Run.objects.get(id=run_id)
    if run.rollback_of_id is not None:
        raise ActionRefused("a rollback run cannot be run again: it undoes the writes of the run it names, once")
    if not available_actions(run)["run_again"]:
        raise ActionRefused(f"only a finished run can be run again; this one is {run.get_status_display().lower()}")
    return _start_audited(run.agent, run.input, actor=actor, idempotency_key=idempotency_key,
                          action="run_again", details={"rerun_of": str(run.id)})


def _start_audited(agent_name, input, *, actor, idempotency_key, action, details, budget=None):
    if not (actor.user is not None and actor.user.has_perm(START_PERMISSION)):
        raise ActionRefused(f"{actor.label} may not start runs: that needs the {role_needed(START_PERMISSION)} role")
    if agent_name == ROLLBACK_AGENT:
        # Its input is a plan an operator confirmed on the rollback page; by hand it would skip that.
        raise ActionRefused("the rollback agent starts only from a run's Roll back… page, where its plan is confirmed")
    try:
        with transaction.atomic():
            run = moves.start_run(agent_name, input, started_by=actor, idempotency_key=idempotency_key,
                                  budget=budget)
            # A key used again returns the run it started, whose start was audited then (or that
            # someone else started: this person started nothing).
            if run.started_by == actor.label and not run.audit.filter(action=action).exists():
                AuditEntry.record(actor, action, run_id=run.id, details={
                    "agent": agent_name, "idempotency_key": idempotency_key, **details,
                })
    except (UnknownAgent, InvalidInput, moves.InvalidIdempotencyKey) as error:
        raise ActionRefused(str(error)) from None
    return run
