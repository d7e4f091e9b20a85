"""Approvals: a tool call that needs a person waits, without a worker, for their decision.

When the policy (tools/policy.py) finds a step's rule is "require approval", it asks here for
the step's request: the first time, a request is made and the run waits for it (a wait of kind
approval, referring to the request); later, the request's state decides. An operator approves
(optionally with edited arguments, validated against the tool's schema) or denies with a reason
the agent receives as the tool's error; a request nobody decides expires, recorded as the
system's, not as a person's denial. A decision is bound to the request and the arguments it was shown (Approval.form_hash), is taken
once, is refused after expiry (checked in the same transaction), is audited here, and, with
APPROVALS_FORBID_SELF, never comes from the person who started the run.
"""

import json
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from pydantic import ValidationError

from runs import live, moves, storable
from runs.actors import EXPIRY, Actor
from runs.agents import describe
from runs.moments import moment_text
from runs.models import AuditEntry, Run, WaitKind
from tools.models import Approval, ApprovalStatus, Redactor, Tool, describe_changes, redact
from tools.registry import DEFAULT_APPROVAL_EXPIRY_SECONDS, REDACTED, TOOLS

A = ApprovalStatus


class ApprovalError(ValueError):
    pass


def request_for(run_id, seq, *, tool_name, agent, args, args_hash):
    """The approval request of this step, made now if there is none yet."""
    existing = Approval.objects.filter(run_id=run_id, seq=seq).first()
    if existing:
        return existing
    tool = Tool.objects.filter(name=tool_name).first()
    expiry = tool.approval_expiry_seconds if tool else DEFAULT_APPROVAL_EXPIRY_SECONDS
    spec = TOOLS[tool_name]
    try:
        with transaction.atomic():
            approval = Approval.objects.create(
                run_id=run_id, seq=seq, tool=tool_name, agent=agent, effect=spec.effect,
                args=redact(tool_name, args), private_args=args, args_hash=args_hash,
                compensation=spec.compensation_tool, started_by=_who_started(run_id),
                expires_at=timezone.now() + timedelta(seconds=expiry),
            )
    except IntegrityError:  # another worker made it a moment ago
        return Approval.objects.get(run_id=run_id, seq=seq)
    live.changed(run_id)
    live.chrome_changed()  # the approvals badge on every open page
    return approval


def approved_for(run_id, seq):
    """The approved request of this step, or None."""
    return Approval.objects.filter(run_id=run_id, seq=seq, status=A.APPROVED).first()


def _who_started(run_id):
    """Who started the run's tree: a child run's approvals answer to its root's starter, so
    four-eyes cannot be bypassed through a child run."""
    run = Run.objects.only("started_by", "parent_id").get(id=run_id)
    for _ in range(100):
        if run.parent_id is None:
            break
        run = Run.objects.only("started_by", "parent_id").get(id=run.parent_id)
    return run.started_by


def arguments_to_run(approval):
    """What the tool is called with: the edited arguments, where redacted values stand for what
    the agent asked."""
    if approval.edited_args is None:
        return approval.private_args
    return _merge(approval, approval.edited_args, Redactor([approval.tool]).sensitive(approval.tool))


def _merge(approval, edited, sensitive):
    """The edit with the agent's secrets put back: *** keeps the agent's value, and so does a
    sensitive field the edit left out (the approver never saw it, so cannot have meant to drop
    it and hand the tool its default)."""
    merged = {key: (approval.private_args.get(key) if value == REDACTED else value) for key, value in edited.items()}
    for key in sensitive - set(edited):
        if key in approval.private_args:
            merged[key] = approval.private_args[key]
    return merged


def decide(approval_id, decision, *, actor, reason="", edited_args_text=None, shown_hash):
    """An operator's decision, audited. Raises ApprovalError, naming the problem, and changes
    nothing (an expired request is recorded as expired, and the error says so)."""
    if decision not in ("approve", "deny"):
        raise ApprovalError(f"decision must be approve or deny, not {decision!r}")
    reason = reason.strip()
    if decision == "deny" and not reason:
        raise ApprovalError("denying needs a reason: the agent receives it as the tool's error")
    with transaction.atomic():
        approval = Approval.objects.select_for_update().get(id=approval_id)
        if approval.status == A.WITHDRAWN:
            raise ApprovalError(f"this request was {approval.reason}; there is nothing left to approve or deny")
        if approval.status != A.PENDING:
            raise ApprovalError(f"this request was already {approval.status} by {approval.decided_by}; a decision is taken once")
        expired = Approval.objects.filter(id=approval.id, expires_at__lte=Now()).exists()
        if expired:
            _expire(approval)
        else:
            if not constant_time_compare(shown_hash or "", approval.form_hash):
                raise ApprovalError(
                    f"this form was not made for request {approval.id} (step {approval.seq} of run "
                    f"{approval.run_id}) with the arguments it has now; open that request and decide it there"
                )
            if settings.APPROVALS_FORBID_SELF and Actor.from_label(approval.started_by) == actor:
                raise ApprovalError("you started this run, and a run's starter may not approve its own steps")
            if decision == "approve" and edited_args_text is not None and edited_args_text.strip():
                approval.edited_args = _validated_edit(approval, edited_args_text)
            _decided(approval, A.APPROVED if decision == "approve" else A.DENIED, actor, reason)
            AuditEntry.record(
                actor, f"approval_{approval.status}", run_id=approval.run_id, reason=reason,
                details={"seq": approval.seq, "tool": approval.tool, "args": approval.args,
                         "edited_args": approval.edited_args, "changes": approval.changes},
            )
    if expired:
        raise ApprovalError(f"this request expired at {moment_text(approval.expires_at)}; the agent was told so")
    return approval


def _validated_edit(approval, text):
    """The edit as stored (secrets still ***), after checking the merged arguments."""
    try:
        edited = storable.loads(text)
    except json.JSONDecodeError as error:
        raise ApprovalError(f"the edited arguments are not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(edited, dict):
        raise ApprovalError("the edited arguments must be a JSON object, one field per argument")
    spec = TOOLS.get(approval.tool)
    if spec is None:
        raise ApprovalError(f"tool {approval.tool!r} is no longer in the code, so an edit cannot be checked: approve or deny as asked")
    sensitive = Redactor([approval.tool]).sensitive(approval.tool)
    changed_secrets = sorted(k for k in sensitive if k in edited and edited[k] != REDACTED)
    if changed_secrets:
        raise ApprovalError(
            f"sensitive fields cannot be edited here ({', '.join(changed_secrets)}): leave them as ***"
        )
    # A secret the edit leaves out keeps the agent's value, shown as *** like one kept.
    edited = {**edited, **{k: REDACTED for k in sorted(sensitive - set(edited)) if k in approval.private_args}}
    try:
        spec.input_model.model_validate(_merge(approval, edited, sensitive))
    except ValidationError as error:
        raise ApprovalError(f"the edited arguments do not fit {approval.tool!r}: {describe(error)}") from None
    return edited


def _decided(approval, status, actor, reason):
    """Record the decision, then wake the run that waits for it (after commit)."""
    approval.status = status
    approval.decided_by = actor.label
    approval.decided_at = timezone.now()
    approval.reason = reason
    approval.save()
    # The run's page shows the decision even while the run is not waiting yet.
    live.changed(approval.run_id)
    live.chrome_changed()
    edits = approval.changes
    why = f"approval of step {approval.seq} {status}" + (f" with edits: {describe_changes(edits)}" if edits else "")
    transaction.on_commit(lambda: moves.wake(approval.run_id, WaitKind.APPROVAL, approval.id, actor=actor, reason=why))


def _expire(approval):
    _decided(approval, A.EXPIRED, EXPIRY, "nobody decided before the request expired")


def expire(approval_id):
    """The request expires, if it is still pending and overdue (checked under its lock)."""
    with transaction.atomic():
        approval = Approval.objects.select_for_update().get(id=approval_id)
        if approval.status == A.PENDING and Approval.objects.filter(id=approval.id, expires_at__lte=Now()).exists():
            _expire(approval)
        return approval


def expire_overdue():
    """For the sweeper: requests past their expiry become expired and their runs go on."""
    for approval_id in Approval.objects.filter(status=A.PENDING, expires_at__lte=Now()).values_list("id", flat=True):
        expire(approval_id)
