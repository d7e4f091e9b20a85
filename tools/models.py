"""The registry as the database knows it, who may call what, the freeze and approvals."""

import json
from typing import NamedTuple

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import connection, models
from django.utils.crypto import salted_hmac

from runs.agents import AGENTS
from tools.registry import REDACTED, TOOLS


# The registry as the database knows it, and who may call what -------------------------------


class Effect(models.TextChoices):
    READ = "read", "read"
    WRITE = "write", "write"
    DELETE = "delete", "delete"


class Tool(models.Model):
    """A registered tool, kept in step with the code (tools.sync) so admins can manage it."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    effect = models.CharField(max_length=8, choices=Effect.choices)
    idempotent = models.BooleanField(default=False)
    open_world = models.BooleanField(default=True)
    # What would undo it: "TOOL" of its compensation, or empty when it is irreversible.
    compensation = models.CharField(max_length=200, blank=True, default="")
    sensitive_fields = models.JSONField(default=list, blank=True)
    input_schema = models.JSONField(default=dict, blank=True)
    # Disabled tools fail every call with a contract error.
    enabled = models.BooleanField(default=True)
    # False when the code no longer registers it (kept: runs and rules may name it).
    registered = models.BooleanField(default=True)
    approval_expiry_seconds = models.PositiveIntegerField(
        default=3600, validators=[MinValueValidator(60, "an approval needs at least 60 seconds to be seen")]
    )
    synced_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("freeze_writes", "Can freeze and unfreeze writes")]
        constraints = [
            models.CheckConstraint(name="tool_effect_valid", condition=models.Q(effect__in=Effect.values)),
        ]

    def __str__(self):
        return self.name

    @property
    def reversible(self):
        return bool(self.compensation)

    @property
    def annotations(self):
        """The MCP tool annotations, derived from the effect and the flags."""
        return {
            "readOnlyHint": self.effect == Effect.READ,
            "destructiveHint": self.effect == Effect.DELETE,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }

    def default_rule(self):
        """The rule when no permission names this tool: reads and reversible writes are
        allowed; deletes and irreversible writes wait for a person."""
        if self.effect == Effect.READ:
            return Rule.ALLOW
        if self.effect == Effect.WRITE and self.reversible:
            return Rule.ALLOW
        return Rule.REQUIRE_APPROVAL


# Redaction: the one place that decides what of a tool's arguments people may see -------------


class Redactor:
    """Tool arguments as people may see them (pages, history.json, approvals, the audit), for
    the tools named, read in one query.

    A tool's secrets are the sensitive fields its code declares and those its database row
    recorded (tools.sync keeps the row after the tool leaves the code), so removing a tool from
    the code never shows its secrets. It fails closed: for a tool the code no longer has, a field
    its row does not describe is hidden too (it may be a secret of an older version), and the
    arguments of a tool unknown to both the code and the database are hidden wholesale.
    """

    def __init__(self, tool_names):
        names = {name for name in tool_names if name}
        self._rows = {
            name: (set(fields or ()), set((schema or {}).get("properties", {})))
            for name, fields, schema in Tool.objects.filter(name__in=names).values_list(
                "name", "sensitive_fields", "input_schema")
        }

    def known(self, tool_name):
        return tool_name in TOOLS or tool_name in self._rows

    def sensitive(self, tool_name):
        """The fields of this tool that are secrets, as far as the code and the database know."""
        spec = TOOLS.get(tool_name)
        fields = set(spec.sensitive) if spec else set()
        if tool_name in self._rows:
            fields |= self._rows[tool_name][0]
        return fields

    def hidden(self, tool_name, keys):
        """Which of these argument names are shown as ***."""
        if not self.known(tool_name):
            return set(keys)
        hidden = self.sensitive(tool_name) & set(keys)
        if tool_name not in TOOLS:
            hidden |= set(keys) - self._rows[tool_name][1]
        return hidden

    def __call__(self, tool_name, args):
        if args is None:
            return None
        if not isinstance(args, dict):
            return args if tool_name in TOOLS else REDACTED
        hidden = self.hidden(tool_name, args)
        return {key: (REDACTED if key in hidden else value) for key, value in args.items()}


def redact(tool_name, args):
    """One tool's arguments as people may see them (see Redactor)."""
    return Redactor([tool_name])(tool_name, args)


def check_agent_name(agent, field=None):
    """A rule or a freeze for an agent that does not exist would silently do nothing."""
    if agent and agent not in AGENTS:
        message = f"there is no agent {agent!r} (known agents: {', '.join(sorted(AGENTS))})"
        raise ValidationError({field: message} if field else message)


class Rule(models.TextChoices):
    ALLOW = "allow", "allow"
    REQUIRE_APPROVAL = "require_approval", "require approval"
    DENY = "deny", "deny"


# Strictest first: where several rules apply at the same level, the strictest wins.
STRICTNESS = [Rule.DENY, Rule.REQUIRE_APPROVAL, Rule.ALLOW]


class ToolPermissionQuerySet(models.QuerySet):
    def decide(self, tool, agent):
        """The rule for `tool` (a Tool) called by `agent`, its cap on calls per run, and why.

        An agent's own rules beat the global ones (agent empty); among the rules of the level
        that decides, deny beats require approval beats allow, and the smallest cap holds. With
        no rule at all, the tool's default by effect applies.
        """
        return self.decide_by_name(tool.name, agent)[1]

    def decide_by_name(self, tool_name, agent):
        """The tool's row (None if it is not synced yet) and the decision for `agent`, read in
        one query: the policy asks at every advance of every run that calls the tool."""
        with connection.cursor() as cursor:
            cursor.execute(RULES_SQL, {"tool": tool_name, "agent": agent})
            rows = cursor.fetchall()
        if not rows:
            return None, None
        enabled, effect, compensation = rows[0][:3]
        tool = Tool(name=tool_name, effect=effect, compensation=compensation, enabled=enabled)
        rules = [ToolPermission(agent=rule_agent, rule=rule, max_calls_per_run=cap)
                 for _, _, _, rule_agent, rule, cap in rows if rule is not None]
        return tool, self.decide_from(tool, rules, agent)

    def decide_from(self, tool, rules, agent):
        """decide, over rules already loaded (the tools page loads them all at once)."""
        rules = [r for r in rules if r.agent in ("", agent)]
        level = [r for r in rules if r.agent == agent] or [r for r in rules if r.agent == ""]
        if not level:
            return Decision(tool.default_rule(), None, f"default for a {'reversible ' if tool.reversible else ''}{tool.effect}")
        rule = min((r.rule for r in level), key=STRICTNESS.index)
        caps = [r.max_calls_per_run for r in level if r.max_calls_per_run is not None]
        source = f"rule for agent {agent!r}" if level[0].agent else "global rule"
        return Decision(rule, min(caps) if caps else None, source)


# The tool and the rules that may apply to one agent (its own and every agent's).
RULES_SQL = """
SELECT t.enabled, t.effect, t.compensation, p.agent, p.rule, p.max_calls_per_run
FROM tools_tool t
LEFT JOIN tools_toolpermission p ON p.tool_id = t.id AND p.agent IN ('', %(agent)s)
WHERE t.name = %(tool)s
"""


class Decision(NamedTuple):
    rule: str
    cap: int | None
    source: str


class ToolPermission(models.Model):
    """Allow, require approval or deny a tool, for every agent or for one."""

    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="permissions")
    # Empty: every agent.
    agent = models.CharField(max_length=200, blank=True, default="")
    rule = models.CharField(max_length=20, choices=Rule.choices)
    max_calls_per_run = models.PositiveIntegerField(null=True, blank=True)
    note = models.CharField(max_length=500, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    objects = ToolPermissionQuerySet.as_manager()

    class Meta:
        ordering = ["tool__name", "agent"]
        constraints = [
            models.CheckConstraint(name="tool_permission_rule_valid", condition=models.Q(rule__in=Rule.values)),
        ]
        indexes = [
            # The guardrail's look-up: the rules of one tool for one agent and for all.
            models.Index(name="tool_permission_lookup_idx", fields=["tool", "agent"]),
        ]

    def __str__(self):
        return f"{self.tool.name}: {self.get_rule_display()} for {self.agent or 'every agent'}"

    def clean(self):
        check_agent_name(self.agent, field="agent")

    def as_dict(self):
        return {"tool": self.tool.name, "agent": self.agent, "rule": self.rule,
                "max_calls_per_run": self.max_calls_per_run, "note": self.note}


# The freeze -----------------------------------------------------------------------------------


class FreezeState(models.Model):
    """The one row every write intent locks (FOR KEY SHARE) and checks: what is frozen now.

    Setting or lifting a freeze locks this row FOR UPDATE, so it waits for the write intents in
    flight, and every later one waits for it and then sees the new state. See tools.freeze.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    # Why everything is frozen; empty when it is not.
    global_reason = models.TextField(blank=True, default="")
    # {agent: reason} for the agents frozen one by one.
    agents = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(name="freeze_state_single_row", condition=models.Q(id=1))]

    def reason_for(self, agent):
        return self.global_reason or self.agents.get(agent, "")

    @classmethod
    def current(cls):
        """The one row, or None where it is missing (the write statement then refuses every
        intent, and says to migrate)."""
        return cls.objects.filter(id=1).first()

    @classmethod
    def reason_now(cls, agent):
        """Why a freeze covers `agent` now; empty when none does."""
        state = cls.current()
        return state.reason_for(agent) if state else ""


class Freeze(models.Model):
    """The record of freezes: who set each one, why, when, and who lifted it."""

    # Empty: every agent.
    agent = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField()
    set_by = models.CharField(max_length=150)
    set_at = models.DateTimeField(auto_now_add=True)
    lifted_by = models.CharField(max_length=150, blank=True, default="")
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-set_at"]
        constraints = [
            models.UniqueConstraint(
                name="freeze_one_active_per_scope", fields=["agent"], condition=models.Q(lifted_at__isnull=True)
            ),
        ]

    def __str__(self):
        return f"freeze of {self.agent or 'every agent'}: {self.reason}"

    @property
    def active(self):
        return self.lifted_at is None


# Approvals ------------------------------------------------------------------------------------


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "pending"
    APPROVED = "approved", "approved"
    DENIED = "denied", "denied"
    EXPIRED = "expired", "expired"
    # The run left for good (cancelled, failed, rolled back) before anyone decided.
    WITHDRAWN = "withdrawn", "withdrawn"


class Approval(models.Model):
    """A tool call waiting for a person: one per step of a run that needs approval."""

    run = models.ForeignKey("runs.Run", on_delete=models.PROTECT, related_name="approvals")
    seq = models.PositiveIntegerField()
    tool = models.CharField(max_length=200)
    agent = models.CharField(max_length=200)
    effect = models.CharField(max_length=8, choices=Effect.choices)
    # As shown to people: sensitive fields redacted.
    args = models.JSONField()
    # As the agent asked, secrets included: never shown; used to check and make the call.
    private_args = models.JSONField(default=dict)
    # The hash of what the agent asked for: a decision is bound to it.
    args_hash = models.CharField(max_length=64)
    # Set when an approver changed the arguments (validated against the tool's schema).
    edited_args = models.JSONField(null=True, blank=True)
    # What would undo it: "TOOL", or empty for irreversible.
    compensation = models.CharField(max_length=200, blank=True, default="")
    started_by = models.CharField(max_length=200)
    status = models.CharField(max_length=12, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    requested_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    # "user:NAME", or "system:expiry" for a request that ran out of time.
    decided_by = models.CharField(max_length=150, blank=True, default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            models.UniqueConstraint(name="approval_one_per_step", fields=["run", "seq"]),
            models.CheckConstraint(name="approval_status_valid", condition=models.Q(status__in=ApprovalStatus.values)),
            models.CheckConstraint(
                name="approval_decided_when_not_pending",
                condition=models.Q(status="pending", decided_at__isnull=True)
                | (~models.Q(status="pending") & models.Q(decided_at__isnull=False)),
            ),
        ]
        indexes = [
            # The inbox and the sweeper: pending requests by expiry.
            models.Index(name="approval_pending_idx", fields=["expires_at"], condition=models.Q(status="pending")),
        ]

    def __str__(self):
        return f"{self.tool} for run {self.run_id} step {self.seq}: {self.status}"

    @property
    def form_hash(self):
        """What a decision form carries, and a decision must bring back: the hash of the
        arguments shown, bound to this request (its id, run and step) and signed with the
        SECRET_KEY, so one request's form cannot decide another with the same arguments."""
        bound = f"{self.id}:{self.run_id}:{self.seq}:{self.args_hash}"
        return salted_hmac("agentops.approval.form", bound, algorithm="sha256").hexdigest()

    @property
    def changes(self):
        """What the approver changed in the arguments (see argument_changes); empty if nothing."""
        return argument_changes(self.args, self.edited_args)


def argument_changes(before, after):
    """The fields an edit changed, as {"field", "from", "to"}; a field the edit left out has no
    "to" (the tool's default applies), a field it added no "from". Both sides as shown to people
    (secrets stay ***). Empty when there was no edit, or it changed nothing."""
    if after is None:
        return []
    changes = []
    for field in sorted(set(before) | set(after)):
        change = {"field": field}
        if field in before:
            change["from"] = before[field]
        if field in after:
            change["to"] = after[field]
        if change.get("from", change) != change.get("to", change):
            changes.append(change)
    return changes


def describe_changes(changes):
    """The changes as one line for people: amount_cents 12900 → 100, note (added) "x"."""
    def shown(value):
        return json.dumps(value, ensure_ascii=False)

    parts = []
    for change in changes:
        if "from" not in change:
            parts.append(f"{change['field']} (added) {shown(change['to'])}")
        elif "to" not in change:
            parts.append(f"{change['field']} {shown(change['from'])} (removed)")
        else:
            parts.append(f"{change['field']} {shown(change['from'])} → {shown(change['to'])}")
    return ", ".join(parts)
