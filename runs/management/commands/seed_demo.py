"""Make the demo users (DEBUG only) and print their passwords; start the demo runs (when the
demo is loaded: DEMO=1).

The passwords are new at every call, so what is printed is always what works. The demo runs
carry idempotency keys, so a second `make up` does not start them again. They are started in the
name of the demo user `operator` (audited as its starts), so four eyes holds: their approvals
wait for another person, such as `admin`.
"""

import secrets

from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

from runs.actors import Actor
from runs.agents import AGENTS
from runs.services import start_run_by
from runs.roles import ADMIN, OPERATOR, VIEWER

DEMO_USERS = [(ADMIN, ADMIN), (OPERATOR, OPERATOR), (VIEWER, VIEWER)]
# Who starts the demo runs: a person, so that four eyes holds (another person approves).
DEMO_STARTER = OPERATOR
DEMO_RUNS = [
    ("demo-refund-A-1001", "refund_customer", {"order_id": "A-1001", "think_seconds": 5}),
    ("demo-refund-A-1002", "refund_customer", {"order_id": "A-1002", "think_seconds": 60}),
    ("demo-batch-1", "refund_batch", {"order_ids": ["A-1001", "A-1003"]}),
    ("demo-refund-unknown-order", "refund_customer", {"order_id": "Z-404", "think_seconds": 0}),
]


class Command(BaseCommand):
    help = "In DEBUG, create or reset the demo users admin, operator and viewer; start the demo runs."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            self.stdout.write(
                "DEBUG is off: no demo users. Create your first admin with "
                "`python manage.py createsuperuser`."
            )
            return
        self.stdout.write("Demo users (passwords are new at every `make up`):")
        for username, role in DEMO_USERS:
            password = secrets.token_urlsafe(9)
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            # The admin role manages tool permissions and users in the Django admin.
            user.is_staff = role == ADMIN
            user.save()
            user.groups.set([Group.objects.get(name=role)])
            self.stdout.write(f"  {username:<9} {password}   ({role})")
        if not apps.is_installed("tools.demo"):
            self.stdout.write("The demo is not loaded (DEMO is off): no demo runs.")
            return
        missing = sorted({agent for _, agent, _ in DEMO_RUNS} - set(AGENTS))
        if missing:
            self.stdout.write(
                f"The demo agents are not loaded ({', '.join(missing)}): AGENT_MODULES names your own "
                "modules, so no demo runs. Add tools.demo.agents to AGENT_MODULES to have them."
            )
            return
        starter = Actor.for_user(User.objects.get(username=DEMO_STARTER))
        for key, agent, data in DEMO_RUNS:
            start_run_by(agent, data, actor=starter, idempotency_key=key)
        self.stdout.write(f"Demo runs: {len(DEMO_RUNS)} (started once; see the runs page)")
