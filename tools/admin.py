"""Tools and their permissions in the Django admin. Every change of a permission is audited
with its old and new values."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import ValidationError

from runs.models import AuditEntry
from runs.actors import Actor
from tools.freeze import FreezeError, check_freeze, lift_freeze, set_freeze
from tools.models import Freeze, Tool, ToolPermission


class ToolPermissionInline(admin.TabularInline):
    model = ToolPermission
    extra = 0
    fields = ["agent", "rule", "max_calls_per_run", "note"]


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ["name", "effect", "idempotent", "open_world", "reversible", "enabled", "registered", "rule_for_all"]
    list_filter = ["effect", "enabled", "registered", "idempotent", "open_world"]
    search_fields = ["name", "description"]
    fields = ["name", "description", "effect", "idempotent", "open_world", "compensation",
              "sensitive_fields", "annotations", "input_schema", "registered",
              "enabled", "approval_expiry_seconds"]
    readonly_fields = [f for f in fields if f not in ("enabled", "approval_expiry_seconds")]
    inlines = [ToolPermissionInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("permissions")

    @admin.display(boolean=True)
    def reversible(self, tool):
        return tool.reversible

    @admin.display(description="rule for every agent")
    def rule_for_all(self, tool):
        decision = ToolPermission.objects.decide_from(tool, list(tool.permissions.all()), agent="")
        return f"{decision.rule} ({decision.source})"

    # Tools come from the code: the admin manages them, it does not make or remove them.
    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        old = Tool.objects.filter(pk=obj.pk).values("enabled", "approval_expiry_seconds").first()
        super().save_model(request, obj, form, change)
        new = {"enabled": obj.enabled, "approval_expiry_seconds": obj.approval_expiry_seconds}
        if old != new:
            AuditEntry.record(Actor.for_user(request.user), "change_tool", target=f"tool:{obj.name}", details={"old": old, "new": new})

    def save_formset(self, request, form, formset, change):
        _audit_permission_changes(request, formset)


class ToolSearch(AutocompleteSelect):
    """The tool field's search box. Redrawing a refused form, Django's looks the submitted
    value up as an id, and a value that is not a number (a crafted POST) raised a 500; such a
    value is left out, and the form says the choice is not valid."""

    def optgroups(self, name, value, attr=None):
        return super().optgroups(name, [v for v in value if str(v).isascii() and str(v).isdigit()], attr)


@admin.register(ToolPermission)
class ToolPermissionAdmin(admin.ModelAdmin):
    list_display = ["tool", "agent_or_all", "rule", "max_calls_per_run", "note", "updated_at"]
    list_filter = ["rule", "tool__effect", "agent"]
    search_fields = ["tool__name", "agent", "note"]
    autocomplete_fields = ["tool"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "tool":
            kwargs["widget"] = ToolSearch(db_field, self.admin_site, using=kwargs.get("using"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="agent")
    def agent_or_all(self, permission):
        return permission.agent or "every agent"

    def save_model(self, request, obj, form, change):
        old = ToolPermission.objects.filter(pk=obj.pk).first() if change else None
        super().save_model(request, obj, form, change)
        _audit(request, "change_permission" if change else "add_permission", obj, old)

    def delete_model(self, request, obj):
        _audit(request, "delete_permission", None, obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for permission in queryset:
            _audit(request, "delete_permission", None, permission)
        super().delete_queryset(request, queryset)


def _audit(request, action, new, old):
    subject = new or old
    AuditEntry.record(
        Actor.for_user(request.user), action, target=f"tool:{subject.tool.name}",
        details={"old": old.as_dict() if old else None, "new": new.as_dict() if new else None},
    )


def _audit_permission_changes(request, formset):
    olds = {p.pk: p.as_dict() for p in ToolPermission.objects.filter(pk__in=[f.instance.pk for f in formset.forms if f.instance.pk])}
    instances = formset.save(commit=False)
    for permission in formset.deleted_objects:
        AuditEntry.record(Actor.for_user(request.user), "delete_permission", target=f"tool:{permission.tool.name}",
                          details={"old": olds.get(permission.pk), "new": None})
        permission.delete()
    for permission in instances:
        old = olds.get(permission.pk)
        permission.save()
        AuditEntry.record(Actor.for_user(request.user), "change_permission" if old else "add_permission",
                          target=f"tool:{permission.tool.name}", details={"old": old, "new": permission.as_dict()})
    formset.save_m2m()


class FreezeForm(forms.ModelForm):
    """Checks what set_freeze would refuse, so the admin shows it on the form."""

    class Meta:
        model = Freeze
        fields = ["agent", "reason"]

    def clean(self):
        data = super().clean()
        try:
            check_freeze(agent=(data.get("agent") or "").strip(), reason=data.get("reason") or "")
        except FreezeError as error:
            raise ValidationError(str(error)) from None
        return data


@admin.register(Freeze)
class FreezeAdmin(admin.ModelAdmin):
    """The freezes, set and lifted through tools.freeze (never by editing rows)."""

    list_display = ["agent_or_all", "reason", "set_by", "set_at", "lifted_by", "lifted_at"]
    list_filter = ["lifted_at"]
    search_fields = ["agent", "reason", "set_by"]
    form = FreezeForm
    fields = ["agent", "reason"]
    actions = ["lift"]

    @admin.display(description="agent")
    def agent_or_all(self, freeze):
        return freeze.agent or "every agent"

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return request.user.has_perm("tools.freeze_writes")

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("tools.freeze_writes") or request.user.has_perm("tools.view_tool")

    def save_model(self, request, obj, form, change):
        try:
            frozen = set_freeze(agent=obj.agent.strip(), reason=obj.reason, actor=Actor.for_user(request.user))
        except FreezeError as error:
            self.message_user(request, f"Not frozen: {error}.", level=messages.ERROR)
            return
        obj.pk = frozen.pk

    @admin.action(description="Lift the selected freezes", permissions=["add"])
    def lift(self, request, queryset):
        for freeze in queryset.filter(lifted_at__isnull=True):
            try:
                lift_freeze(agent=freeze.agent, actor=Actor.for_user(request.user))
            except FreezeError as error:
                self.message_user(request, f"Not lifted: {error}.", level=messages.ERROR)
                continue
            self.message_user(request, f"Lifted the freeze of {freeze.agent or 'every agent'}; its runs are queued again.")
