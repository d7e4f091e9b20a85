"""The demo world: the outside world that the demo and proving tools act on.

These tables stand for other people's systems (a mail service, a payment provider, a ledger).
Each tool writes them in its own transaction, as a remote call would, never inside ours.
"""

from django.db import models


class SentEmail(models.Model):
    """A mail service that sends whatever it is asked to: it does not dedupe."""

    class Meta:
        ordering = ["-sent_at", "-id"]

    to = models.CharField(max_length=200)
    subject = models.CharField(max_length=200)
    body = models.TextField()
    idempotency_key = models.CharField(max_length=200)
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"to {self.to}: {self.subject}"


class Refund(models.Model):
    """A payment provider that dedupes refunds on the idempotency key."""

    order_id = models.CharField(max_length=100)
    amount_cents = models.PositiveIntegerField()
    idempotency_key = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    # Taken back (a rollback's compensation): when, and the key of the call that did it.
    reversed_at = models.DateTimeField(null=True, blank=True)
    reversal_key = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(name="refund_idempotency_key_unique", fields=["idempotency_key"]),
        ]

    def __str__(self):
        return f"refund {self.amount_cents} on {self.order_id}"


class LedgerCall(models.Model):
    """Every call the chaos agent's tools receive, and whether it took effect (executed).

    An idempotent tool's downstream takes effect once per key and records later calls with
    executed=False; a non-idempotent one takes effect at every call. `manage.py chaos` counts
    keys that took effect more than once.
    """

    key = models.CharField(max_length=200)
    tool = models.CharField(max_length=100)
    executed = models.BooleanField()
    amount = models.IntegerField(default=0)
    called_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(name="ledger_call_key_idx", fields=["key"])]
        constraints = [
            # The idempotent downstream: one effect per key.
            models.UniqueConstraint(
                name="ledger_idempotent_effect_once",
                fields=["key"],
                condition=models.Q(executed=True, tool__in=["chaos_deposit"]),
            ),
        ]


class StormService(models.Model):
    """The storm tools' far side (`manage.py storm`): how often it fails. One row (id 1), written
    by the command before its workers start, read at every call, so that the workers (other
    processes) fail at the rate the command was given."""

    failure_rate = models.FloatField(default=0.0)

    @classmethod
    def current_failure_rate(cls):
        return cls.objects.filter(id=1).values_list("failure_rate", flat=True).first() or 0.0

    @classmethod
    def set_failure_rate(cls, rate):
        cls.objects.update_or_create(id=1, defaults={"failure_rate": rate})


class StormCall(models.Model):
    """Every call the storm tools' far side receives: its key, whether it took effect (the first
    call of a key that got past the failure before the effect) and whether its caller was
    answered with a success. An effect whose answer was lost is found again by the key's next
    call, which answers without a second effect."""

    key = models.CharField(max_length=200)
    tool = models.CharField(max_length=100)
    took_effect = models.BooleanField()
    answered = models.BooleanField()
    called_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(name="storm_call_key_idx", fields=["key"])]
