"""The three roles, as Django groups, and the permissions each one holds.

This table is the one place that says who may do what. The groups are made and brought in step
with it after every `migrate`.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions

VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"

_VIEW = ["runs.view_run", "tools.view_tool", "tools.view_toolpermission"]
_ACT_ON_RUNS = [
    "runs.pause_run",
    "runs.resume_run",
    "runs.cancel_run",
    "runs.approve_step",
    "runs.rollback_run",
    "runs.fork_run",
    "runs.resolve_step",
    "runs.start_run",
]
_MANAGE_USERS = [
    "auth.view_user",
    "auth.add_user",
    "auth.change_user",
    "auth.delete_user",
    "auth.view_group",
]

_MANAGE_TOOLS = [
    "tools.change_tool",
    "tools.add_toolpermission",
    "tools.change_toolpermission",
    "tools.delete_toolpermission",
    "tools.freeze_writes",
]

ROLE_PERMISSIONS = {
    VIEWER: _VIEW,
    OPERATOR: _VIEW + _ACT_ON_RUNS,
    ADMIN: _VIEW + _ACT_ON_RUNS + _MANAGE_USERS + _MANAGE_TOOLS,
}


def role_of(user):
    """The user's highest role by name, for the page header; None for a user without one."""
    names = {group.name for group in user.groups.all()}
    for role in (ADMIN, OPERATOR, VIEWER):
        if role in names:
            return role
    return ADMIN if user.is_superuser else None


def sync_role_groups(apps=global_apps, using="default", **kwargs):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    # Permissions are made by auth's own post_migrate handler, app by app; make sure all of
    # them exist before the groups point at them.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
    for role, codes in ROLE_PERMISSIONS.items():
        permissions = []
        for code in codes:
            app_label, codename = code.split(".")
            try:
                permissions.append(
                    Permission.objects.using(using).get(
                        content_type__app_label=app_label, codename=codename
                    )
                )
            except Permission.DoesNotExist:
                raise LookupError(f"role {role!r} names permission {code!r}, which does not exist")
        group, _ = Group.objects.using(using).get_or_create(name=role)
        group.permissions.set(permissions)
