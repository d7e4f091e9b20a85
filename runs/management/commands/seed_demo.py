"""Make the demo users (DEBUG only) and print their passwords.

The passwords are new at every call, so what is printed is always what works.
"""

import secrets

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

from runs.roles import ADMIN, OPERATOR, VIEWER

DEMO_USERS = [(ADMIN, ADMIN), (OPERATOR, OPERATOR), (VIEWER, VIEWER)]


class Command(BaseCommand):
    help = "In DEBUG, create or reset the demo users admin, operator and viewer."

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
