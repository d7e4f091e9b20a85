from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from runs.models import AuditEntry
from tools.freeze import FreezeError, lift_freeze, set_freeze
from tools.models import Tool, ToolPermission


@permission_required("tools.view_tool", raise_exception=True)
def tool_list(request: HttpRequest) -> HttpResponse:
    tools = list(Tool.objects.prefetch_related("permissions"))
    rows = [
        {
            "tool": tool,
            "for_all": ToolPermission.objects.decide_from(tool, list(tool.permissions.all()), agent=""),
            "agent_rules": [p for p in tool.permissions.all() if p.agent],
        }
        for tool in tools
    ]
    return render(request, "tools/list.html", {"rows": rows})


def _back(request):
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "/"
    return redirect(target)


@require_POST
@permission_required("tools.freeze_writes", raise_exception=True)
def freeze_set(request: HttpRequest) -> HttpResponse:
    agent = request.POST.get("agent", "").strip()
    reason = request.POST.get("reason", "")
    actor = f"user:{request.user.get_username()}"
    try:
        set_freeze(agent=agent, reason=reason, actor=actor)
    except FreezeError as error:
        messages.error(request, f"Not frozen: {error}.")
    else:
        AuditEntry.record(request.user, "freeze", target=f"agent:{agent}" if agent else "everything", reason=reason.strip())
        messages.success(request, f"Frozen: no write or delete starts for {f'agent {agent}' if agent else 'any agent'} until the freeze is lifted. Reads go on.")
    return _back(request)


@require_POST
@permission_required("tools.freeze_writes", raise_exception=True)
def freeze_lift(request: HttpRequest) -> HttpResponse:
    agent = request.POST.get("agent", "").strip()
    try:
        lift_freeze(agent=agent, actor=f"user:{request.user.get_username()}")
    except FreezeError as error:
        messages.error(request, f"Not lifted: {error}.")
    else:
        AuditEntry.record(request.user, "unfreeze", target=f"agent:{agent}" if agent else "everything")
        messages.success(request, "Freeze lifted: the runs that waited for it are queued again.")
    return _back(request)
