"""Approvals: a tool call that needs a person waits, without a worker, for their decision.

When a step's rule is "require approval" (runs/journal.py, Context._guard), the run asks here:
the first time, a request is made and the run waits; later, the request's state decides. An
operator approves (optionally with edited arguments, validated against the tool's schema) or
denies with a reason the agent receives as the tool's error; a request nobody decides expires,
recorded as the system's, not as a person's denial. A decision is bound to the arguments it was
shown, is taken once, is refused after expiry (checked in the same transaction), comes from
the session's user, and, with APPROVALS_FORBID_SELF, never from the person who started the run.
"""

import json
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone
from pydantic import ValidationError

from runs import live
from runs.agents import describe
from runs.models import AuditEntry, Run, RunStatus, transition
from tools.models import Approval, ApprovalStatus, Tool
from tools.registry import REDACTED, TOOLS, redact

A = ApprovalStatus


class ApprovalError(ValueError):
    pass


def request_for(run_id, seq, *, tool_name, agent, args, args_hash):
    """The approval request of this step, made now if there is none yet."""
    existing = Approval.objects.filter(run_id=run_id, seq=seq).first()
    if existing:
        return existing
    tool = Tool.objects.filter(name=tool_name).first()
    expiry = tool.approval_expiry_seconds if tool else 3600
    spec = TOOLS[tool_name]
    try:
        with transaction.atomic():
            approval = Approval.objects.create(
                run_id=run_id, seq=seq, tool=tool_name, agent=agent, effect=spec.effect,
                args=redact(tool_name, args), private_args=args, args_hash=args_hash,
                compensation=spec.compensation.tool if spec.compensation else "",
                started_by=_who_started(run_id), expires_at=timezone.now() + timedelta(seconds=expiry),
            )
    except IntegrityError:  # another worker made it a moment ago
        return Approval.objects.get(run_id=run_id, seq=seq)
    live.changed(run_id)
    return approval


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
    return _merge(approval, approval.edited_args)


def _merge(approval, edited):
    return {key: (approval.private_args.get(key) if value == REDACTED else value) for key, value in edited.items()}


def decide(approval_id, decision, *, user, reason="", edited_args_text=None, shown_hash):
    """An operator's decision. Raises ApprovalError, naming the problem, and changes nothing."""
    if decision not in ("approve", "deny"):
        raise ApprovalError(f"decision must be approve or deny, not {decision!r}")
    reason = reason.strip()
    if decision == "deny" and not reason:
        raise ApprovalError("denying needs a reason: the agent receives it as the tool's error")
    expired = False
    with transaction.atomic():
        approval = Approval.objects.select_for_update().get(id=approval_id)
        if approval.status != A.PENDING:
            raise ApprovalError(f"this request was already {approval.status} by {approval.decided_by}; a decision is taken once")
        if Approval.objects.filter(id=approval.id, expires_at__lte=Now()).exists():
            _expire(approval)
            expired = True
        else:
            if shown_hash != approval.args_hash:
                raise ApprovalError("the request is not the one you were shown; open it again")
            username = user.get_username()
            if settings.APPROVALS_FORBID_SELF and approval.started_by == f"user:{username}":
                raise ApprovalError("you started this run, and a run's starter may not approve its own steps")
            if decision == "approve" and edited_args_text is not None and edited_args_text.strip():
                approval.edited_args = _validated_edit(approval, edited_args_text)
            approval.status = A.APPROVED if decision == "approve" else A.DENIED
            approval.decided_by = f"user:{username}"
            approval.decided_at = timezone.now()
            approval.reason = reason
            approval.save()
            AuditEntry.record(
                user, f"approval_{approval.status}", run=approval.run, reason=reason,
                details={"seq": approval.seq, "tool": approval.tool, "edited_args": approval.edited_args},
            )
            _wake(approval, actor=f"user:{username}")
    if expired:
        raise ApprovalError(f"this request expired at {approval.expires_at:%Y-%m-%d %H:%M:%S %Z}; the agent was told so")
    return approval


def _validated_edit(approval, text):
    """The edit as stored (secrets still ***), after checking the merged arguments."""
    try:
        edited = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApprovalError(f"the edited arguments are not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(edited, dict):
        raise ApprovalError("the edited arguments must be a JSON object, one field per argument")
    spec = TOOLS[approval.tool]
    changed_secrets = sorted(k for k in spec.sensitive if k in edited and edited[k] != REDACTED)
    if changed_secrets:
        raise ApprovalError(
            f"sensitive fields cannot be edited here ({', '.join(changed_secrets)}): leave them as ***"
        )
    try:
        spec.input_model.model_validate(_merge(approval, edited))
    except ValidationError as error:
        raise ApprovalError(f"the edited arguments do not fit {approval.tool!r}: {describe(error)}") from None
    return edited


def _expire(approval):
    approval.status = A.EXPIRED
    approval.decided_by = "system:expiry"
    approval.decided_at = timezone.now()
    approval.reason = "nobody decided before the request expired"
    approval.save()
    _wake(approval, actor="system:expiry")


def _wake(approval, *, actor):
    # transition() publishes the change of a run that moves; one that does not move (not yet
    # waiting) still has a decided request to show.
    if not transition(approval.run_id, RunStatus.QUEUED, expect={RunStatus.WAITING}, actor=actor,
                      reason=f"approval of step {approval.seq} {approval.status}"):
        live.changed(approval.run_id)


def wake_decided():
    """For the sweeper: runs still waiting for a request that was decided (a lost wake-up)."""
    waiting = Run.objects.filter(status=RunStatus.WAITING, status_reason__startswith="waiting for approval",
                                 approvals__status__in=[A.APPROVED, A.DENIED, A.EXPIRED])
    for run_id in waiting.values_list("id", flat=True).distinct():
        if not Approval.objects.filter(run_id=run_id, status=A.PENDING).exists():
            transition(run_id, RunStatus.QUEUED, expect={RunStatus.WAITING}, actor="system:sweeper",
                       reason="its approval request was decided")


def expire_overdue():
    """For the sweeper: requests past their expiry become expired and their runs go on."""
    for approval_id in Approval.objects.filter(status=A.PENDING, expires_at__lte=Now()).values_list("id", flat=True):
        with transaction.atomic():
            approval = Approval.objects.select_for_update().get(id=approval_id)
            if approval.status == A.PENDING:
                _expire(approval)
