"""What the login pages add to the audit log: a lockout (django-axes, settings
LOGIN_FAILURE_LIMIT and LOGIN_LOCKOUT_MINUTES).

Axes signals the lockout at every attempt refused while it lasts; the audit records the
lockout once per username and address for as long as the lockout lasts, so a flood of attempts
cannot flood the log.
"""

from django.conf import settings
from django.utils import timezone

from runs.actors import Actor
from runs.models import AuditEntry


def record_lockout(sender, request, username, ip_address, **kwargs):
    target = f"user {username}" if username else f"address {ip_address}"
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    if AuditEntry.objects.filter(action="login_locked_out", target=target, at__gte=since,
                                 details__ip_address=ip_address).exists():
        return
    AuditEntry.record(
        Actor.system("login"), "login_locked_out", target=target,
        reason=f"{settings.AXES_FAILURE_LIMIT} failed logins",
        details={"username": username or "", "ip_address": ip_address},
    )
