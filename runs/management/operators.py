"""Who acts when a management command acts as an operator: a real user, with the role for it.

A command that changes runs (start_run, resolve_step, fork_run) takes `--user NAME`. Without it,
the name of the operating-system account running the command is used, if an agentops user of
that name exists; there is no anonymous "command line" actor any more. The user must be active
and hold the permission the page's action needs (runs/roles.py), and the service then audits
the action in that user's name, as it does for the page.
"""

import getpass
import json

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from runs import storable
from runs.actors import Actor
from runs.roles import role_needed


def add_user_argument(parser):
    parser.add_argument(
        "--user", dest="username", default=None,
        help="the agentops user who acts (default: a user named like your operating-system account)",
    )


def os_username():
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return None


def operator(username, permission, doing):
    """The Actor for the user who may do `doing` (words for the error), or CommandError saying
    what is wrong: no such user, an inactive one, or one without the role."""
    User = get_user_model()
    if username is None:
        username = os_username()
        if not username or not User.objects.filter(username=username).exists():
            raise CommandError(
                f"say who acts with --user NAME: there is no agentops user named after your "
                f"operating-system account ({username or 'unknown'!s})"
            )
    try:
        user = User.objects.get(username=username)
    except User.DoesNotExist:
        raise CommandError(
            f"there is no agentops user {username!r}: name an existing one with --user "
            "(an admin adds users in the admin, or `manage.py createsuperuser`)"
        ) from None
    if not user.is_active:
        raise CommandError(f"user {username!r} is inactive and may not act")
    if not user.has_perm(permission):
        raise CommandError(
            f"user {username!r} may not {doing}: that needs the {role_needed(permission) or 'admin'} role, "
            "which an admin gives in the admin's Users page"
        )
    return Actor.for_user(user)


def json_option(text, option):
    """A command's JSON option (--input, --result), read as the pages read JSON (nesting
    limited); a CommandError naming the option when it is not JSON."""
    try:
        return storable.loads(text)
    except json.JSONDecodeError as error:
        raise CommandError(f"{option} is not JSON: {error}") from None
