import uuid

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    NEEDS_ATTENTION = "needs_attention"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class Run(models.Model):
    """One execution of an agent with an input."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.CharField(max_length=200)
    status = models.CharField(max_length=32, choices=RunStatus.choices, default=RunStatus.QUEUED)
    input = models.JSONField()
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    # Who or what started it: a user's name, "cli", or the parent run.
    started_by = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("pause_run", "Can pause a run"),
            ("resume_run", "Can resume a run"),
            ("cancel_run", "Can cancel a run"),
            ("approve_step", "Can approve or deny a step that waits for approval"),
            ("rollback_run", "Can roll back a run"),
            ("resolve_step", "Can resolve a step whose outcome is in doubt"),
        ]
        constraints = [
            models.CheckConstraint(
                name="run_status_valid", condition=models.Q(status__in=RunStatus.values)
            ),
        ]

    def __str__(self):
        return f"{self.agent} {self.id}"
