"""What operators do to runs: pause, resume, cancel, and resolve a step in doubt.

Each function is the one path for its action, whichever door it comes through (a page, the
command line, the API to come): it checks what the action needs, acts, and writes the audit
entry in the same transaction, in the name of the Actor it is given. A refusal raises
ActionRefused with a message that says why, and changes nothing.
"""

from django.db import transaction
from django.db.models import Max
from pydantic import ValidationError

from runs import moves
from runs.agents import InvalidInput, UnknownAgent, describe
from runs.models import AuditEntry, JournalEntry, Requested, Run, RunStatus
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
            raise ActionRefused(f"run {run_id} is {run.get_status_display().lower()}, not waiting for a decision")
        intent = JournalEntry.in_doubt(run_id)
        if intent is None:
            raise ActionRefused(
                f"no step of run {run_id} is in doubt: {run.status_reason or 'it needs attention for another reason'}"
            )
        if intent.seq != seq:
            raise ActionRefused(f"step {seq} is not in doubt; step {intent.seq} is")
        status, outcome, error = {
            Resolution.HAPPENED: (JournalEntry.Status.SUCCEEDED, result, None),
            Resolution.RUN_AGAIN: (JournalEntry.Status.ABANDONED, None, None),
            Resolution.FAIL: (JournalEntry.Status.FAILED, None,
                              {"type": "failed_by_operator", "message": f"failed by operator: {reason}"}),
        }[resolution]
        JournalEntry.objects.create(
            run_id=run_id, seq=seq, attempt=intent.attempt, phase=JournalEntry.Phase.OUTCOME,
            kind=intent.kind, name=intent.name, effect=intent.effect, args_hash=intent.args_hash,
            idempotency_key=intent.idempotency_key, status=status, result=outcome, error=error,
            actor=actor.label,
        )
        run.events.create(kind="resolution", actor=actor.label, reason=reason,
                          details={"seq": seq, "decision": resolution})
        moved = moves.move(run_id, S.QUEUED, actor=actor, reason=f"step {seq} resolved: {resolution}")
        AuditEntry.record(actor, f"resolve_{resolution}", run_id=run_id, reason=reason,
                          details={"seq": seq, "result": result})
    return moved.run


def available_actions(run):
    """The operator actions the run's state allows now, read off the allowed moves (the run
    page shows a button for each that the user may also take)."""
    can_move_to = moves.TRANSITIONS[run.status]
    return {
        "pause": S.PAUSED in can_move_to and run.requested == Requested.NOTHING,
        "resume": run.status == S.PAUSED,
        "cancel": S.CANCELLED in can_move_to and run.requested != Requested.CANCEL,
        "resolve": run.status == S.NEEDS_ATTENTION,
    }


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
