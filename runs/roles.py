"""The three roles, as Django groups, and the permissions each one holds.

This table is the one place that says who may do what. The groups are made and brought in step
with it after every `migrate`.
"""

from functools import wraps

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.core.exceptions import PermissionDenied

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


def role_needed(permission):
    """The lowest role that holds the permission, or None when no role does."""
    for role in (VIEWER, OPERATOR, ADMIN):
        if permission in ROLE_PERMISSIONS[role]:
            return role
    return None


class RoleNeeded(PermissionDenied):
    """A refusal that says which role would have been allowed (the 403 page shows it)."""

    def __init__(self, permission):
        self.permission = permission
        self.role = role_needed(permission)
        if self.role:
            super().__init__(f"This needs the {self.role} role")
        else:
            super().__init__(f"This needs a permission no role holds ({permission})")


def require_permission(user, permission):
    """Raise RoleNeeded unless the user holds the permission."""
    if not user.has_perm(permission):
        raise RoleNeeded(permission)


def permission_required(permission, raise_exception=True):
    """Django's decorator of the same name, except that the refusal names the role needed.
    It always refuses with a 403: LoginRequiredMiddleware sends the anonymous to the login page
    before any view (the keyword is there so a view reads as with Django's)."""
    if not raise_exception:
        raise ValueError("a refusal here is always a 403; people who are not logged in never get this far")

    def decorator(view):
        @wraps(view)
        def checked(request, *args, **kwargs):
            require_permission(request.user, permission)
            return view(request, *args, **kwargs)

        return checked

    return decorator


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
