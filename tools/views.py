from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from django.core.exceptions import ValidationError
from django.http import Http404
from django.utils import timezone

from runs.actors import Actor
from runs.roles import permission_required
from runs.models import JournalEntry
from runs.timeline import build_steps
from tools import breakers
from tools.approvals import ApprovalError, decide
from tools.freeze import FreezeError, lift_freeze, set_freeze
from tools.models import Approval, ApprovalStatus, Tool, ToolPermission
from tools.registry import TOOLS


@permission_required("tools.view_tool", raise_exception=True)
def tool_list(request: HttpRequest) -> HttpResponse:
    tools = list(Tool.objects.prefetch_related("permissions"))
    # The tools that prove the runtime (chaos, benchmarks) only when asked for.
    unlisted = [tool for tool in tools if tool.name in TOOLS and not TOOLS[tool.name].listed]
    show_all = request.GET.get("all") == "1"
    if not show_all:
        tools = [tool for tool in tools if tool not in unlisted]
    breaker_states = breakers.states(tool.name for tool in tools)
    rows = [
        {
            "tool": tool,
            "for_all": ToolPermission.objects.decide_from(tool, list(tool.permissions.all()), agent=""),
            "agent_rules": [p for p in tool.permissions.all() if p.agent],
            "breaker": breaker_states[tool.name],
        }
        for tool in tools
    ]
    return render(request, "tools/list.html", {
        "rows": rows, "unlisted": len(unlisted), "show_all": show_all,
        "breakers_unknown": any(state.state == breakers.UNKNOWN for state in breaker_states.values()),
    })


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
    try:
        set_freeze(agent=agent, reason=reason, actor=Actor.for_user(request.user))
    except FreezeError as error:
        messages.error(request, f"Not frozen: {error}.")
    else:
        messages.success(request, f"Frozen: no write or delete starts for {f'agent {agent}' if agent else 'any agent'} until the freeze is lifted. Reads go on.")
    return _back(request)


@require_POST
@permission_required("tools.freeze_writes", raise_exception=True)
def freeze_lift(request: HttpRequest) -> HttpResponse:
    agent = request.POST.get("agent", "").strip()
    try:
        lift_freeze(agent=agent, actor=Actor.for_user(request.user))
    except FreezeError as error:
        messages.error(request, f"Not lifted: {error}.")
    else:
        messages.success(request, "Freeze lifted: the runs that waited for it are queued again.")
    return _back(request)


@require_POST
@permission_required("tools.change_tool", raise_exception=True)
def breaker_reset(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("tool", "")
    try:
        breakers.reset(name, actor=Actor.for_user(request.user))
    except breakers.BreakerError as error:
        messages.error(request, f"Not reset: {error}.")
    else:
        messages.success(request, f"Breaker of {name} reset: it is closed and its window is empty; the next call of {name} goes through.")
    return _back(request)


@permission_required("runs.view_run", raise_exception=True)
def approval_list(request: HttpRequest) -> HttpResponse:
    pending = list(Approval.objects.filter(status=ApprovalStatus.PENDING).order_by("expires_at").select_related("run"))
    decided = list(Approval.objects.exclude(status=ApprovalStatus.PENDING).order_by("-decided_at")[:50])
    return render(request, "tools/approvals.html", {"pending": pending, "decided": decided, "now": timezone.now()})


@permission_required("runs.view_run", raise_exception=True)
def approval_detail(request: HttpRequest, approval_id: int) -> HttpResponse:
    try:
        approval = Approval.objects.select_related("run").get(id=approval_id)
    except (Approval.DoesNotExist, ValidationError):
        raise Http404("there is no such approval request") from None
    return _approval_page(request, approval)


def _approval_page(request, approval, edited_args_text=None):
    """The request, its last steps and the decision forms; the edit form holds
    edited_args_text when a refused edit comes back to the operator."""
    rows = JournalEntry.objects.filter(run=approval.run, seq__gte=max(1, approval.seq - 5)).order_by("seq", "attempt", "id")
    context = {
        "approval": approval,
        "last_steps": build_steps(approval.run, list(rows)),
        "now": timezone.now(),
        "can_decide": request.user.has_perm("runs.approve_step") and approval.status == ApprovalStatus.PENDING,
        "edited_args_text": edited_args_text,
    }
    return render(request, "tools/approval.html", context)


@require_POST
@permission_required("runs.approve_step", raise_exception=True)
def approval_decide(request: HttpRequest, approval_id: int) -> HttpResponse:
    approval = Approval.objects.filter(id=approval_id).first()
    if approval is None:
        raise Http404("there is no such approval request")
    decision = request.POST.get("decision", "")
    edited_args_text = request.POST.get("edited_args")
    try:
        decide(approval.id, decision, actor=Actor.for_user(request.user), reason=request.POST.get("reason", ""),
               edited_args_text=edited_args_text, shown_hash=request.POST.get("shown_hash", ""))
    except ApprovalError as error:
        messages.error(request, f"Not done: {error}.")
        if edited_args_text is not None:
            # The page again, with the operator's edit as they typed it, to correct.
            approval.refresh_from_db()
            return _approval_page(request, approval, edited_args_text)
    else:
        messages.success(request, "Approved: the run goes on and makes the call." if decision == "approve"
                         else "Denied: the agent receives your reason as the tool's error.")
    return redirect("tools:approval", approval_id=approval.id)
