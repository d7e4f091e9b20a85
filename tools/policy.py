"""The policy: whether a tool step may run, decided before its intent is written.

The recorder (runs/recorder.py) asks, for a tool step's first run, and acts on the answer; the
policy writes nothing to the journal. The checks follow DESIGN's guardrail order after the
contract (which the agent's API checks): a disabled tool, the freeze, the permission's deny,
the cap on calls per run, and approval. The answer is one of:

- Go(args): make the call, with these arguments (an approver's edits, or the agent's own);
- Refuse(type, message, fails_run): record the step as failed with this error; the agent sees
  it as the tool's error, unless the run fails at once (a budget);
- Hold(wait): the run waits (for the freeze to lift, for a person's decision);
- Mismatch(...): the journal's record of this step names another call (the code changed).

Rules and the freeze are read once per advance of a run (one Policy per advance).
"""

from dataclasses import dataclass, field

from django.utils import timezone

from runs.models import DENIED
from runs.waits import WaitFor
from tools import approvals
from tools.models import ApprovalStatus, FreezeState, Rule, Tool, ToolPermission
from tools.registry import ContractViolation

A = ApprovalStatus


@dataclass(frozen=True)
class Go:
    args: dict


@dataclass(frozen=True)
class Refuse:
    type: str
    message: str
    fails_run: bool = False
    # Recorded with the error, as data: for a denial, who denied which call and why.
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    wait: WaitFor


@dataclass(frozen=True)
class Mismatch:
    source: str
    name: str
    args_hash: str


class Policy:
    def __init__(self, run_id, agent, during_freeze=False):
        self.run_id = run_id
        self.agent = agent
        # A rollback an admin allowed to run during a freeze (Run.during_freeze).
        self.during_freeze = during_freeze
        self._rules = {}  # tool name -> (enabled, Permission)
        self._frozen = None  # the freeze's reason for this agent

    def first_run(self, spec, seq, args, args_hash, call_number):
        """For a tool step with nothing journaled: may it run, and with what arguments?"""
        enabled, permission = self._rules_for(spec)
        if not enabled:
            return Refuse("contract", f"tool {spec.name!r} is disabled")
        if spec.writes and not self.during_freeze:
            frozen = self.frozen_reason()
            if frozen:
                return Hold(WaitFor.freeze(frozen))
        if permission.rule == Rule.DENY:
            return Refuse("permission_denied", f"tool {spec.name!r} is denied to agent {self.agent!r} ({permission.source})")
        if permission.cap is not None and call_number > permission.cap:
            return Refuse(
                "budget",
                f"budget exceeded: tool {spec.name!r} may be called {permission.cap} times a run "
                f"({permission.source}); this was call {call_number}",
                fails_run=True,
            )
        if permission.rule == Rule.REQUIRE_APPROVAL:
            return self._approval(spec, seq, args, args_hash)
        return Go(args)

    def rerun(self, spec, seq, args):
        """For a tool step that runs again (in doubt, or abandoned by an operator): the call
        that was approved, edits included."""
        approval = approvals.approved_for(self.run_id, seq)
        return Go(args) if approval is None else self._approved_arguments(spec, approval)

    def frozen_reason(self):
        if self._frozen is None:
            self._frozen = FreezeState.reason_now(self.agent)
        return self._frozen

    def _approval(self, spec, seq, args, args_hash):
        approval = approvals.request_for(
            self.run_id, seq, tool_name=spec.name, agent=self.agent, args=args, args_hash=args_hash,
        )
        if (approval.tool, approval.args_hash) != (spec.name, args_hash):
            return Mismatch("an approval was requested for", approval.tool, approval.args_hash)
        if approval.status == A.PENDING and approval.expires_at <= timezone.now():
            approval = approvals.expire(approval.id)
        if approval.status == A.PENDING:
            return Hold(WaitFor.approval(approval))
        if approval.status == A.DENIED:
            return Refuse(DENIED, f"denied by operator: {approval.reason}", details={
                "tool": spec.name, "seq": seq, "denied_by": approval.decided_by, "reason": approval.reason,
            })
        if approval.status == A.EXPIRED:
            return Refuse("approval_expired", f"nobody approved the call to {spec.name!r} before the request expired")
        return self._approved_arguments(spec, approval)

    def _approved_arguments(self, spec, approval):
        args = approvals.arguments_to_run(approval)
        try:
            return Go(spec.parse(args).model_dump(mode="json"))
        except ContractViolation as error:
            return Refuse("contract", f"the approved arguments are invalid: {error}")

    def _rules_for(self, spec):
        if spec.name not in self._rules:
            self._rules[spec.name] = self._load_rules(spec)
        return self._rules[spec.name]

    def _load_rules(self, spec):
        tool, permission = ToolPermission.objects.decide_by_name(spec.name, self.agent)
        if tool is None:  # not synced yet: the code's own declaration decides
            tool = Tool(name=spec.name, effect=spec.effect, compensation=spec.compensation_tool)
            return True, ToolPermission.objects.decide_from(tool, [], self.agent)
        return tool.enabled, permission
