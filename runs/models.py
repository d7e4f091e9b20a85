"""Runs, their journal and their event record.

The rules that must never break are kept by the database itself (see the migrations): a run's
status is one of RunStatus and changes only along runs.moves.TRANSITIONS; a waiting run says
what it waits for; journal and event rows can be
inserted but never updated or deleted; a lease exists exactly while a run is running.
"""

import re
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex, GinIndex, OpClass
from django.db import models
from django.db.models.functions import Cast, Now, Upper
from django.urls import reverse
from django.utils import timezone

from runs.actors import Actor


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    NEEDS_ATTENTION = "needs_attention", "needs attention"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed", "compensation failed"


S = RunStatus
# The error type of a tool call an operator denied (tools.policy), as the agent and the run see it.
DENIED = "denied"
RUN_REFERENCE = re.compile(r"[0-9a-f-]{4,36}")
# Statuses a run never leaves on its own. (Which moves are legal: runs.moves.TRANSITIONS.)
FINISHED = {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.COMPENSATED, S.COMPENSATION_FAILED}


class Requested(models.TextChoices):
    """What an operator asked of a running run, honoured at its next step boundary."""

    NOTHING = ""
    PAUSE = "pause"
    CANCEL = "cancel"


class WaitKind(models.TextChoices):
    """What a waiting run waits for. Its reference (Run.wait_ref) says which one."""

    SLEEP = "sleep"  # until Run.wake_at
    CHILD = "child"  # for the child run whose id is the reference to finish
    APPROVAL = "approval"  # for a person's decision on the Approval whose id is the reference
    FREEZE = "freeze"  # for the freeze that covers the run's agent to lift
    RETRY = "retry"  # until Run.wake_at, to try the step whose seq is the reference again


class ParkedBy(models.TextChoices):
    """Why a run that needs attention was parked by a limit (runs/budgets.py, runs/retries.py)."""

    BUDGET = "budget"  # one of its budgets would be exceeded
    LOOP = "loop"  # the same call, again and again
    RETRIES = "retries"  # a step's attempts ran out


class RunQuerySet(models.QuerySet):
    def lease_expired(self):
        return self.filter(status=S.RUNNING, lease_expires_at__lt=Now())

    def waiting_for(self, kind):
        return self.filter(status=S.WAITING, wait_kind=kind)

    def by_reference(self, text):
        """A run by its id, or by a prefix of it that only one run has (the pages show the first
        eight characters). Run.DoesNotExist says what was wrong."""
        text = text.strip().lower()
        if not RUN_REFERENCE.fullmatch(text):
            raise Run.DoesNotExist(f"{text!r} is not a run id, nor the start of one (4 to 36 of 0-9, a-f and -)")
        found = list(self.annotate(text_id=Cast("id", models.TextField())).filter(text_id__startswith=text)[:2])
        if not found:
            raise Run.DoesNotExist(f"there is no run {text!r}")
        if len(found) > 1:
            raise Run.DoesNotExist(f"more than one run starts with {text!r}: give more of its id")
        return found[0]


class Run(models.Model):
    """One execution of an agent with an input."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.CharField(max_length=200)
    status = models.CharField(max_length=32, choices=RunStatus.choices, default=RunStatus.QUEUED)
    input = models.JSONField()
    output = models.JSONField(null=True, blank=True)
    # {"type": ..., "message": ...} for a failed run.
    error = models.JSONField(null=True, blank=True)
    # Why the run is where it is, for people: what it waits for, what needs attention. Nothing
    # decides on this text; what a waiting run waits for is wait_kind and wait_ref.
    status_reason = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    # Who or what started it: "user:NAME", "cli", or "run:PARENT-ID".
    started_by = models.CharField(max_length=200)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    # A rollback run undoes the writes of the run it names (runs/rollback.py).
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rollbacks"
    )
    # A fork starts with its origin's journal up to and including step forked_at_seq.
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="forks"
    )
    forked_at_seq = models.PositiveIntegerField(null=True, blank=True)
    # A rollback an admin allowed to write while a freeze holds (a person's repair, audited).
    during_freeze = models.BooleanField(default=False)

    requested = models.CharField(
        max_length=8, choices=Requested.choices, default=Requested.NOTHING, blank=True
    )
    # While waiting: what for (runs.waits), and which one (a run id, an approval id).
    wait_kind = models.CharField(max_length=16, choices=WaitKind.choices, blank=True, default="")
    wait_ref = models.CharField(max_length=64, blank=True, default="")
    wake_at = models.DateTimeField(null=True, blank=True)

    # What the run may spend ({budget: limit or null}; runs/budgets.py): its agent's defaults
    # with what its start said, as raised by operators since.
    budget = models.JSONField(default=dict, db_default=models.Value({}, models.JSONField()), blank=True)
    # While it needs attention because it reached a limit: which kind (the runs page filters).
    parked_by = models.CharField(max_length=16, choices=ParkedBy.choices, blank=True, default="", db_default="")
    # An operator's "retry now": step retry_grant_seq tries again at once after its attempt
    # retry_grant_after (0: before its first), with a fresh round of attempts.
    retry_grant_seq = models.PositiveIntegerField(null=True, blank=True)
    retry_grant_after = models.PositiveIntegerField(null=True, blank=True)

    # The lease: who advances the run now, until when, and the epoch that fences every write.
    lease_owner = models.CharField(max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_epoch = models.BigIntegerField(default=0)
    # Poison-run guard (runs.sweeper): leases that lapsed in a row without a step finishing in
    # between, and how many steps had finished when the last one lapsed.
    # (Database defaults too, on every column added since the first: rows inserted by raw SQL,
    # the benchmarks' seeds, need not name them.)
    lost_leases = models.PositiveIntegerField(default=0, db_default=0)
    finished_steps_at_loss = models.PositiveIntegerField(default=0, db_default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("pause_run", "Can pause a run"),
            ("resume_run", "Can resume a run"),
            ("cancel_run", "Can cancel a run"),
            ("approve_step", "Can approve or deny a step that waits for approval"),
            ("rollback_run", "Can roll back a run"),
            ("fork_run", "Can fork a run from one of its steps"),
            ("resolve_step", "Can resolve a step whose outcome is in doubt"),
            ("start_run", "Can start a run"),
        ]
        constraints = [
            models.CheckConstraint(
                name="run_status_valid", condition=models.Q(status__in=RunStatus.values)
            ),
            # A lease exists exactly while the run is running.
            models.CheckConstraint(
                name="run_lease_only_while_running",
                condition=(
                    models.Q(status=S.RUNNING, lease_expires_at__isnull=False)
                    & ~models.Q(lease_owner="")
                )
                | (
                    ~models.Q(status=S.RUNNING)
                    & models.Q(lease_expires_at__isnull=True, lease_owner="")
                ),
            ),
            models.CheckConstraint(
                name="run_request_only_while_running",
                condition=models.Q(requested="") | models.Q(status=S.RUNNING),
            ),
            models.CheckConstraint(
                name="run_wake_at_only_while_waiting",
                condition=models.Q(wake_at__isnull=True) | models.Q(status=S.WAITING),
            ),
            # A waiting run always says what it waits for, and only a waiting run does.
            models.CheckConstraint(
                name="run_wait_only_while_waiting",
                condition=(models.Q(status=S.WAITING) & ~models.Q(wait_kind=""))
                | (~models.Q(status=S.WAITING) & models.Q(wait_kind="", wait_ref="")),
            ),
            models.CheckConstraint(
                name="run_wait_kind_valid", condition=models.Q(wait_kind__in=["", *WaitKind.values])
            ),
            # A sleep knows when it ends; a wait for a child or an approval names which.
            models.CheckConstraint(
                name="run_sleep_has_wake_at",
                condition=~models.Q(wait_kind__in=[WaitKind.SLEEP, WaitKind.RETRY]) | models.Q(wake_at__isnull=False),
            ),
            models.CheckConstraint(
                name="run_parked_only_while_needing_attention",
                condition=models.Q(parked_by="") | models.Q(status=S.NEEDS_ATTENTION),
            ),
            models.CheckConstraint(
                name="run_parked_by_valid", condition=models.Q(parked_by__in=["", *ParkedBy.values])
            ),
            models.CheckConstraint(
                name="run_retry_grant_names_its_attempt",
                condition=models.Q(retry_grant_seq__isnull=True, retry_grant_after__isnull=True)
                | models.Q(retry_grant_seq__isnull=False, retry_grant_after__isnull=False),
            ),
            models.CheckConstraint(
                name="run_wait_names_its_reference",
                condition=~models.Q(wait_kind__in=[WaitKind.CHILD, WaitKind.APPROVAL]) | ~models.Q(wait_ref=""),
            ),
            models.CheckConstraint(
                name="run_only_a_rollback_runs_during_a_freeze",
                condition=models.Q(during_freeze=False) | models.Q(rollback_of__isnull=False),
            ),
            # A fork names the step it was forked at, and only a fork does.
            models.CheckConstraint(
                name="run_fork_names_its_step",
                condition=models.Q(forked_from__isnull=True, forked_at_seq__isnull=True)
                | models.Q(forked_from__isnull=False, forked_at_seq__isnull=False),
            ),
            models.UniqueConstraint(
                name="run_idempotency_key_unique",
                fields=["idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
            ),
        ]
        indexes = [
            # The runs page: newest first, alone or filtered by status or agent (keyset pages).
            models.Index(name="run_newest_idx", fields=["-created_at", "-id"]),
            models.Index(name="run_status_newest_idx", fields=["status", "-created_at", "-id"]),
            models.Index(name="run_agent_newest_idx", fields=["agent", "-created_at", "-id"]),
            # The runs page: search for text in the input (UPPER(input::text) LIKE, as
            # Django's icontains writes it), by trigrams.
            GinIndex(
                OpClass(Upper(Cast("input", models.TextField())), name="gin_trgm_ops"),
                name="run_input_trgm_idx",
            ),
            # The sweeper: running runs whose lease expired.
            models.Index(
                name="run_lease_expiry_idx",
                fields=["lease_expires_at"],
                condition=models.Q(status=S.RUNNING),
            ),
            # The sweeper: waiting runs whose wake-up is overdue; queued runs whose job was lost.
            models.Index(
                name="run_wake_at_idx", fields=["wake_at"], condition=models.Q(status=S.WAITING)
            ),
            # The wakers and the sweeper: the runs waiting for one kind of event (and one ref).
            models.Index(
                name="run_waiting_for_idx", fields=["wait_kind", "wait_ref"],
                condition=models.Q(status=S.WAITING),
            ),
            models.Index(
                name="run_queued_idx", fields=["updated_at"], condition=models.Q(status=S.QUEUED)
            ),
            # The activity page and /metrics (runs.metrics): runs finished in the last hour or day.
            models.Index(
                name="run_finished_at_idx", fields=["finished_at"], condition=models.Q(finished_at__isnull=False)
            ),
        ]

    def __str__(self):
        return f"{self.agent} {self.id}"

    @property
    def is_finished(self):
        return self.status in FINISHED

    @property
    def ended_by_denial(self):
        """A failed run that ended because an operator said no (a denied approval the agent did
        not handle): {"by", "tool", "reason"}, read from the error's data; None otherwise.
        Pages show it apart from a crash."""
        error = self.error or {}
        if self.status != S.FAILED or error.get("type") != DENIED:
            return None
        return {"by": Actor.from_label(error.get("denied_by", "")).name or "an operator",
                "tool": error.get("tool", ""), "reason": error.get("reason", "")}

    def get_absolute_url(self):
        return reverse("runs:detail", args=[self.id])

    @property
    def duration(self):
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def last_heartbeat(self):
        """When the lease holder last extended its lease (or claimed the run): every beat
        sets the expiry one lease from now. None without a lease."""
        if self.lease_expires_at is None:
            return None
        return self.lease_expires_at - timedelta(seconds=settings.RUN_LEASE_SECONDS)


def heartbeat_seconds():
    """How often a worker extends the lease of the run it holds (runs.engine.Heartbeat): three
    times per lease, so one missed beat does not lose it."""
    return settings.RUN_LEASE_SECONDS / 3


class RunEvent(models.Model):
    """Append-only record of what happened to a run and who caused it."""

    class Kind(models.TextChoices):
        CREATED = "created"
        TRANSITION = "transition"
        REQUEST = "request"
        RESOLUTION = "resolution"

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(db_default=Now())
    kind = models.CharField(max_length=16, choices=Kind.choices)
    from_status = models.CharField(max_length=32, blank=True, default="")
    to_status = models.CharField(max_length=32, blank=True, default="")
    # "worker:HOST:PID", "user:NAME", "system:sweeper", "cli" ...
    actor = models.CharField(max_length=200)
    reason = models.TextField(blank=True, default="")
    details = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.CheckConstraint(
                name="run_event_kind_valid", condition=models.Q(kind__in=["created", "transition", "request", "resolution"])
            ),
        ]

    def __str__(self):
        return f"{self.run_id} {self.kind} {self.from_status}->{self.to_status} by {self.actor}"


class JournalEntry(models.Model):
    """One row of a run's write-ahead journal: the intent or the outcome of a step.

    A step is numbered by its place in the run's deterministic replay (seq). A write records an
    intent before it calls the tool and an outcome after; a read, an LLM call and other steps
    without side effects record only their outcome. Each execution of a step is an attempt.
    Rows are never updated or deleted (the database refuses it), so history cannot be rewritten;
    what happened later is a later row.
    """

    class Phase(models.TextChoices):
        INTENT = "intent"
        OUTCOME = "outcome"

    class Kind(models.TextChoices):
        TOOL = "tool"
        LLM = "llm"
        SLEEP = "sleep"
        NOW = "now"
        UUID = "uuid"
        CHILD_START = "child_start", "start child run"
        CHILD_WAIT = "child_wait", "wait for child run"

    class Status(models.TextChoices):
        # Outcome rows only.
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        # An operator decided the attempt in doubt did not happen: it runs again.
        ABANDONED = "abandoned"
        # The attempt failed and the step is not over: it is tried again (error.next_at), or
        # its attempts ran out and a person decides (error.exhausted).
        RETRY = "retry", "failed, to retry"

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="journal")
    seq = models.PositiveIntegerField()
    attempt = models.PositiveIntegerField(default=1)
    phase = models.CharField(max_length=8, choices=Phase.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=200, blank=True, default="")
    effect = models.CharField(max_length=8, blank=True, default="")
    args = models.JSONField(null=True, blank=True)
    args_hash = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, blank=True, default="")
    result = models.JSONField(null=True, blank=True)
    # {"type": ..., "message": ...}
    error = models.JSONField(null=True, blank=True)
    # Who wrote the row: "worker:HOST:PID" with the lease epoch, "user:NAME", "system:...".
    actor = models.CharField(max_length=200)
    lease_epoch = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["run", "seq", "attempt", "id"]
        constraints = [
            # One intent and one outcome per attempt: a second writer of the same row fails.
            models.UniqueConstraint(
                name="journal_one_row_per_phase", fields=["run", "seq", "attempt", "phase"]
            ),
            models.CheckConstraint(
                name="journal_phase_valid", condition=models.Q(phase__in=["intent", "outcome"])
            ),
            models.CheckConstraint(
                name="journal_status_only_on_outcomes",
                condition=(models.Q(phase="intent") & models.Q(status=""))
                | (models.Q(phase="outcome") & models.Q(status__in=["succeeded", "failed", "abandoned", "retry"])),
            ),
        ]
        indexes = [
            # The activity page and /metrics (runs.metrics): the steps of the last hour or days.
            # Rows are only appended, in time order, so a BRIN index (a few pages for millions
            # of rows) finds them without a btree's cost on every journal write.
            BrinIndex(name="journal_created_at_brin", fields=["created_at"]),
        ]

    def __str__(self):
        return f"{self.run_id} #{self.seq}.{self.attempt} {self.phase} {self.kind} {self.name}"

    @staticmethod
    def is_open_call(row):
        """The last row of a step is a tool call's intent: the call may or may not have happened.

        Whoever finds it while no worker is making the call (a replay after a crash, an operator
        looking at a run that needs attention) has a step in doubt in front of them.
        """
        return row.phase == JournalEntry.Phase.INTENT and row.kind == JournalEntry.Kind.TOOL

    @classmethod
    def in_doubt(cls, run_id):
        """The intent row of the run's open tool call, or None."""
        last = cls.objects.filter(run_id=run_id).order_by("-seq", "-attempt", "-id").first()
        return last if last is not None and cls.is_open_call(last) else None


class AuditEntry(models.Model):
    """Append-only record of every operator action: who, what, when, on what, and why."""

    at = models.DateTimeField(db_default=Now())
    # The name as text, not a foreign key: the record outlives the account.
    username = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.PROTECT, related_name="audit")
    target = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    details = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # The audit page, newest first, by user or by action.
            models.Index(name="audit_newest_idx", fields=["-at", "-id"]),
            models.Index(name="audit_user_idx", fields=["username", "-at"]),
            models.Index(name="audit_action_idx", fields=["action", "-at"]),
        ]

    def __str__(self):
        return f"{self.at} {self.username} {self.action} {self.target}"

    @classmethod
    def record(cls, actor, action, *, run_id=None, target="", reason="", details=None):
        """Called by the service that acts (runs.services, tools.approvals, tools.freeze, the
        admin's forms), in the transaction of the action itself."""
        return cls.objects.create(
            username=actor.name if actor.is_person else actor.label, action=action, run_id=run_id,
            target=target or (str(run_id) if run_id else ""), reason=reason, details=details,
        )
