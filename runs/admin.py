"""The Django admin's user pages, for the admin role.

Admins manage people through the role groups (runs/roles.py). What would let one admin make
themselves or anyone else more than an admin is for superusers only: superuser status, direct
permissions (outside the roles), and any change to a superuser's account. Every change of a
person's access (groups, staff, active, superuser, direct permissions) is audited with its old
and new values, in the transaction of the change; so are adding and deleting a person, and
an admin setting someone's password.
"""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.db import transaction

from runs.actors import Actor
from runs.models import AuditEntry

SUPERUSER_ONLY_FIELDS = ("is_superuser", "user_permissions")


def access_of(user):
    """What a person may do, as plain values (for the audit's old and new)."""
    if user.pk is None:
        return {"groups": [], "is_staff": False, "is_active": True, "is_superuser": False, "user_permissions": []}
    return {
        "groups": sorted(user.groups.values_list("name", flat=True)),
        "is_staff": user.is_staff,
        "is_active": user.is_active,
        "is_superuser": user.is_superuser,
        "user_permissions": sorted(
            f"{app}.{code}" for app, code in user.user_permissions.values_list("content_type__app_label", "codename")
        ),
    }


def record_access_change(actor, user, before, after):
    changed = {key: {"old": before[key], "new": after[key]} for key in after if before[key] != after[key]}
    if changed:
        AuditEntry.record(actor, "change_user_access", target=f"user {user.username}", details=changed)


admin.site.unregister(User)


@admin.register(User)
class PeopleAdmin(UserAdmin):
    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.is_superuser:
            return fieldsets
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f not in SUPERUSER_ONLY_FIELDS]})
            for name, options in fieldsets
        ]

    def get_form(self, request, obj=None, **kwargs):
        if not request.user.is_superuser:
            kwargs["exclude"] = [*(kwargs.get("exclude") or []), *SUPERUSER_ONLY_FIELDS]
        return super().get_form(request, obj, **kwargs)

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_queryset(self, request):
        # Bulk actions (delete selected) act on the list: keep superusers out of an admin's.
        people = super().get_queryset(request)
        return people if request.user.is_superuser else people.filter(is_superuser=False)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            AuditEntry.record(Actor.for_user(request.user), "add_user", target=f"user {obj.username}",
                              details=access_of(obj))

    def delete_model(self, request, obj):
        AuditEntry.record(Actor.for_user(request.user), "delete_user", target=f"user {obj.username}",
                          details=access_of(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            AuditEntry.record(Actor.for_user(request.user), "delete_user", target=f"user {user.username}",
                              details=access_of(user))
        super().delete_queryset(request, queryset)

    def user_change_password(self, request, id, form_url=""):
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:
            user = User.objects.get(pk=id)
            AuditEntry.record(Actor.for_user(request.user), "set_password", target=f"user {user.username}")
        return response

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Groups and permissions are saved after the user row (save_related): compare the
        # access before the whole change with the access after it, in one transaction.
        with transaction.atomic():
            user = self.get_object(request, object_id) if object_id else None
            before = access_of(user) if user is not None else None
            response = super().changeform_view(request, object_id, form_url, extra_context)
            if request.method == "POST" and before is not None:
                after_user = User.objects.get(pk=user.pk)
                record_access_change(Actor.for_user(request.user), after_user, before, access_of(after_user))
        return response
