import hashlib
import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from runs import services, storable
from runs.actors import Actor
from runs.listing import RunListing
from runs.budgets import KEYS as BUDGET_KEYS
from runs.models import AuditEntry, JournalEntry, ParkedBy, Run, RunStatus
from runs.roles import permission_required, require_permission
from runs.rollback import stopped_at
from tools.models import FreezeState
from runs.services import Resolution, RollbackResolution
from runs.timeline import build_steps, retry_panel, spending, waterfall
from runs.requests import whole_number

AUDIT_PAGE_SIZE = 100


def _get_run(run_id) -> Run:
    try:
        return Run.objects.get(id=run_id)
    except (Run.DoesNotExist, ValidationError):
        raise Http404("there is no such run") from None


@permission_required("runs.view_run", raise_exception=True)
def run_list(request: HttpRequest) -> HttpResponse:
    listing = RunListing.from_params(request.GET)
    runs, next_cursor = listing.page()
    context = {
        "listing": listing, "runs": runs, "next_cursor": next_cursor, "counts": listing.counts(),
        "parked_counts": listing.parked_counts(), "statuses": RunStatus.choices, "parked_kinds": ParkedBy.choices,
        "agents": listing.agents(),
    }
    template = "runs/list.html#table" if request.htmx else "runs/list.html"
    return render(request, template, context)


STEP_WINDOW = 250


def run_context(run: Run, *, user, first_seq=None, last_seq=None):
    """What the run page shows. Its steps come in windows of STEP_WINDOW, the latest first, so
    a run of thousands of steps opens as fast as a short one; first_seq and last_seq choose a
    window (the waterfall's zoom)."""
    journal = JournalEntry.objects.filter(run=run)
    step_count = journal.aggregate(last=Max("seq"))["last"] or 0
    zoomed = last_seq is not None and last_seq >= 1
    if first_seq is None or first_seq < 1:
        first_seq = max(1, (last_seq if zoomed else step_count) - STEP_WINDOW + 1)
    last_seq = min(last_seq, first_seq + STEP_WINDOW - 1) if zoomed and last_seq >= first_seq else first_seq + STEP_WINDOW - 1
    rows = list(journal.filter(seq__gte=first_seq, seq__lte=last_seq).order_by("seq", "attempt", "id"))
    attempts = journal.aggregate(
        total=Count("id", filter=Q(phase=JournalEntry.Phase.INTENT)),
        retried=Count("id", filter=Q(phase=JournalEntry.Phase.INTENT, attempt__gt=1)),
        failed=Count("id", filter=Q(phase=JournalEntry.Phase.OUTCOME, status=JournalEntry.Status.RETRY)),
    )
    approvals = list(run.approvals.all())
    spent = spending(run)
    repeated = spent.repeated if run.parked_by == ParkedBy.LOOP else ()
    steps = build_steps(run, rows, [a for a in approvals if first_seq <= a.seq <= last_seq], repeated=repeated)
    in_doubt = next((step for step in steps if step.status == "in_doubt"), None)
    events = list(run.events.all())
    window = {
        "first": first_seq,
        "last": min(last_seq, step_count),
        "earlier": max(1, first_seq - STEP_WINDOW) if first_seq > 1 else None,
        "later": last_seq + 1 if last_seq < step_count else None,
        "zoomed": zoomed or first_seq > 1,
    }
    return {
        "run": run,
        "steps": steps,
        "step_count": step_count,
        "attempts": attempts,
        "window": window,
        "last_row_id": max((row.id for row in rows), default=0),
        "waterfall": waterfall(run, steps, timezone.now(), events=events, approvals=approvals, window=window),
        "events": events,
        "children": _children_tree(run),
        **fork_context(run, user),
        "in_doubt": in_doubt,
        "retry": retry_panel(run, step_count),
        "spending": spent,
        "pending_approval": run.approvals.filter(status="pending").first(),
        "rollbacks": list(run.rollbacks.order_by("created_at")),
        "rollback_stopped": rollback_stopped(run),
        "can": {
            action: allowed and user.has_perm(PERMISSIONS[action]) and (action != "resolve" or in_doubt is not None)
            for action, allowed in services.available_actions(run).items()
        },
    }


def controls_state(context):
    """What the page's controls show: the consumer resends them only when this changes, so a
    reason being typed is not wiped."""
    stopped = context["rollback_stopped"]
    retry = context["retry"]
    return (context["can"], getattr(context["in_doubt"], "seq", None),
            (stopped.failed["run_id"], stopped.failed["seq"]) if stopped else None,
            retry.state if retry else None, context["spending"].limits)


def steps_state(context):
    """What the page shows of each step (seq -> status, attempts, rows, marked as a loop's): the
    consumer resends a step only when its entry changes."""
    return {step.seq: (step.status, step.attempts, len(step.rows), step.repeated) for step in context["steps"]}


def state_key(state):
    """A short fingerprint of a state, which the page hands to its websocket: the consumer then
    knows what the page shows, and does not replace what it need not (a form being filled)."""
    return hashlib.sha256(repr(state).encode()).hexdigest()[:16]


CHILD_TREE_DEPTH = 6


def _children_tree(run):
    """The run's descendants as a tree: one query per level, CHILD_TREE_DEPTH levels at most."""
    roots, level, nodes = [], [run.id], {}
    for depth in range(CHILD_TREE_DEPTH):
        children = list(Run.objects.filter(parent_id__in=level).order_by("created_at"))
        if not children:
            break
        for child in children:
            node = nodes[child.id] = {"run": child, "children": [], "cut": False}
            (roots if child.parent_id == run.id else nodes[child.parent_id]["children"]).append(node)
        level = [child.id for child in children]
    else:
        for child_id in level:
            nodes[child_id]["cut"] = Run.objects.filter(parent_id=child_id).exists()
    return roots


@permission_required("runs.view_run", raise_exception=True)
def run_detail(request: HttpRequest, run_id) -> HttpResponse:
    run = _get_run(run_id)
    # The window ?from=SEQ&to=SEQ: anything but digits is a 400 that names it; 0 is no bound.
    first, last = (whole_number(request.GET, name) or None for name in ("from", "to"))
    context = run_context(run, user=request.user, first_seq=first, last_seq=last)
    context["shown"] = urlencode({
        "controls": state_key(controls_state(context)), "steps": state_key(steps_state(context)),
        **({"from": first} if first else {}), **({"to": last} if last else {}),
    })
    return render(request, "runs/detail.html", context)


def seq_param(params, name):
    """A step number from a live socket's query (the window its page was given), or None: a
    socket has no 400 to answer with, so anything else shows every step."""
    value = params.get(name, "")
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
    return int(value) if value.isascii() and value.isdigit() and int(value) >= 1 else None


# Operator actions: each a POST with CSRF, permission-checked, audited, refused with a message
# when the run's state does not allow it.

PERMISSIONS = {
    "rollback": "runs.rollback_run",
    "rollback_resolve": "runs.rollback_run",
    "cancel_and_rollback": "runs.rollback_run",
    "pause": "runs.pause_run",
    "resume": "runs.resume_run",
    "cancel": "runs.cancel_run",
    "resolve": "runs.resolve_step",
    "retry_step": "runs.resolve_step",
    "fail_step": "runs.resolve_step",
    "raise_budget": "runs.resume_run",
    "run_again": services.START_PERMISSION,
}
ACTIONS = {"pause": services.pause, "resume": services.resume, "cancel": services.cancel}


@require_POST
def run_action(request: HttpRequest, run_id, action) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404("no such action")
    require_permission(request.user, PERMISSIONS[action])
    run = _get_run(run_id)
    try:
        ACTIONS[action](run.id, actor=Actor.for_user(request.user), reason=request.POST.get("reason", "").strip())
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
    else:
        messages.success(request, ACTION_DONE[action])
    return _back_to(request, run)


ACTION_DONE = {
    "pause": "Pause requested: the run stops at its next step boundary (at once if it was not running).",
    "resume": "Resumed: the run is queued and a worker will take it.",
    "cancel": "Cancel requested: the run stops at its next step boundary (at once if it was not running).",
}


@require_POST
@permission_required("runs.resolve_step", raise_exception=True)
def resolve_step(request: HttpRequest, run_id, seq: int) -> HttpResponse:
    run = _get_run(run_id)
    decision = request.POST.get("decision", "")
    reason = request.POST.get("reason", "").strip()
    result = None
    if decision == Resolution.HAPPENED:
        result, problem = _json_of(request.POST.get("result", ""), "The result")
        if problem:
            messages.error(request, problem)
            return _back_to(request, run)
    try:
        services.resolve_step(run.id, seq, decision, actor=Actor.for_user(request.user), result=result, reason=reason)
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
    else:
        messages.success(request, DECISION_DONE[decision].format(seq=seq))
    return _back_to(request, run)


DECISION_DONE = {
    Resolution.HAPPENED: "Step {seq} recorded as happened; the agent receives your result and the run goes on.",
    Resolution.RUN_AGAIN: "Step {seq} will run again with the same idempotency key; the run is queued.",
    Resolution.FAIL: "Step {seq} failed; the agent receives your reason as the tool's error.",
}


@permission_required("runs.rollback_run", raise_exception=True)
def rollback_page(request: HttpRequest, run_id) -> HttpResponse:
    """The plan first (GET); the operator's confirmation starts the rollback (POST)."""
    run = _get_run(run_id)
    after_seq = whole_number(request.POST if "after" in request.POST else request.GET, "after")
    if request.method == "POST" and request.POST.get("cancel_first") == "1":
        return _cancel_to_roll_back(request, run)
    if request.method == "POST":
        try:
            undo = services.roll_back(
                run.id, actor=Actor.for_user(request.user), reason=request.POST.get("reason", ""),
                shown_digest=request.POST.get("digest", ""), acknowledged=request.POST.getlist("ack"),
                after_seq=after_seq, during_freeze=request.POST.get("during_freeze") == "1",
            )
        except services.ActionRefused as error:
            messages.error(request, f"Not rolled back: {error}.")
        else:
            messages.success(request, f"Rolling back: run {str(undo.id)[:8]} undoes the steps in the order shown; "
                                      "its steps arrive on its page.")
            return _back_to(request, run)
    try:
        plan, refused = services.rollback_plan(run, after_seq), ""
    except services.ActionRefused as error:
        plan, refused = None, str(error)
    if run.status == RunStatus.RUNNING and run.requested == "cancel":
        refused = "the run is stopping at its next step boundary; this page shows its plan once it has stopped"
    return render(request, "runs/rollback.html", {
        "run": run, "plan": plan, "refused": refused, "after_seq": after_seq,
        "freeze_reason": FreezeState.reason_now(run.agent),
        "may_override_freeze": request.user.has_perm("tools.freeze_writes"),
    })


def _cancel_to_roll_back(request, run):
    """A run that has not stopped is cancelled first (at its next step boundary, if it is
    running); its plan follows on the plan page once it has stopped."""
    require_permission(request.user, "runs.cancel_run")
    reason = request.POST.get("reason", "").strip()
    try:
        services.cancel(run.id, actor=Actor.for_user(request.user), reason=reason and f"to roll it back: {reason}")
    except services.ActionRefused as error:
        messages.error(request, f"Not cancelled: {error}.")
        return _back_to(request, run)
    messages.success(request, "Cancelled to roll it back: the plan below is what would be undone.")
    url = reverse("runs:rollback", args=[run.id])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def rollback_stopped(run):
    return stopped_at(run) if run.status == RunStatus.COMPENSATION_FAILED else None


ROLLBACK_RESOLVED = {
    RollbackResolution.RETRY: "Retrying: a new rollback run calls the failed compensation again, then the rest.",
    RollbackResolution.DONE: "Recorded as done: the rollback goes on with the rest.",
    RollbackResolution.SKIP: "Skipped: that write stays done, and the rollback goes on with the rest.",
}


@require_POST
@permission_required("runs.rollback_run", raise_exception=True)
def resolve_rollback(request: HttpRequest, run_id) -> HttpResponse:
    run = _get_run(run_id)
    decision = request.POST.get("decision", "")
    result = None
    if decision == RollbackResolution.DONE:
        result, problem = _json_of(request.POST.get("result", ""), "The result")
        if problem:
            messages.error(request, problem)
            return _back_to(request, run)
    try:
        services.resolve_rollback(run.id, decision, actor=Actor.for_user(request.user), reason=request.POST.get("reason", ""),
                                  result=result)
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
    else:
        messages.success(request, ROLLBACK_RESOLVED[decision])
    return _back_to(request, run)


def _json_of(text, what):
    """(value, None) for JSON text; (None, a message naming the line and column) otherwise."""
    try:
        return storable.loads(text.strip()), None
    except json.JSONDecodeError as error:
        return None, f"{what} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); nothing was changed."


def _back_to(request, run):
    url = run.get_absolute_url()
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@permission_required("runs.view_run", raise_exception=True)
def audit_list(request: HttpRequest) -> HttpResponse:
    entries = AuditEntry.objects.all()
    username = request.GET.get("user", "").strip()
    action = request.GET.get("action", "").strip()
    if username:
        entries = entries.filter(username=username)
    if action:
        entries = entries.filter(action=action)
    before = whole_number(request.GET, "before")
    if before is not None:
        entries = entries.filter(id__lt=before)
    page = list(entries.order_by("-id")[: AUDIT_PAGE_SIZE + 1])
    more = len(page) > AUDIT_PAGE_SIZE
    page = page[:AUDIT_PAGE_SIZE]
    context = {
        "entries": page,
        "next_before": page[-1].id if more else None,
        "username": username,
        "action": action,
        "usernames": AuditEntry.objects.order_by().values_list("username", flat=True).distinct(),
        "actions": AuditEntry.objects.order_by().values_list("action", flat=True).distinct(),
    }
    return render(request, "runs/audit.html", context)


# Fork from a step: a new run that keeps this run's steps 1..N (N's result optionally edited) and
# goes on from N + 1 (runs.services.fork_run).


def fork_context(run: Run, user):
    """The run's forks (the page links them, and its origin) and whether the user may fork it."""
    return {
        "forks": list(run.forks.order_by("created_at", "id").only("id", "forked_at_seq")),
        "can_fork": run.rollback_of_id is None and user.has_perm("runs.fork_run"),
    }


@require_POST
@permission_required("runs.fork_run", raise_exception=True)
def fork_run(request: HttpRequest, run_id, seq: int) -> HttpResponse:
    run = _get_run(run_id)
    text = request.POST.get("result", "").strip()
    result = services.NOT_EDITED
    if text:
        result, problem = _json_of(text, "The edited result")
        if problem:
            messages.error(request, problem)
            return _back_to(request, run)
    try:
        fork = services.fork_run(run.id, seq, actor=Actor.for_user(request.user), result=result,
                                 reason=request.POST.get("reason", ""))
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
        return _back_to(request, run)
    messages.success(request, f"Forked: this new run keeps steps 1-{seq} of run {run.id} and continues from step {seq + 1}.")
    return _back_to(request, fork)


# Retries and budgets: "retry now" for a step waiting to be tried again (or out of attempts), and
# raising a run's budget. Failing a step that ran out of attempts is resolve_step's "fail".


@require_POST
@permission_required("runs.resolve_step", raise_exception=True)
def retry_step(request: HttpRequest, run_id, seq: int) -> HttpResponse:
    run = _get_run(run_id)
    try:
        services.retry_step(run.id, seq, actor=Actor.for_user(request.user), reason=request.POST.get("reason", "").strip())
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
    else:
        if run.status == RunStatus.NEEDS_ATTENTION:
            messages.success(request, f"Step {seq} gets a fresh round of attempts, starting now; the run is queued.")
        else:
            messages.success(request, f"Step {seq} is tried again now, without waiting; the run is queued.")
    return _back_to(request, run)


@require_POST
@permission_required("runs.resume_run", raise_exception=True)
def raise_budget(request: HttpRequest, run_id) -> HttpResponse:
    """The form's figures, one per budget: blank leaves it, "unlimited" ticked lifts it."""
    run = _get_run(run_id)
    unlimited = set(request.POST.getlist("unlimited"))
    texts = {key: "none" if key in unlimited else request.POST.get(f"limit_{key}", "").strip() for key in BUDGET_KEYS}
    try:
        limits = services.limits_from_text({key: text for key, text in texts.items() if text})
        raised = services.raise_budget(run.id, limits, actor=Actor.for_user(request.user),
                                       reason=request.POST.get("reason", "").strip())
    except services.ActionRefused as error:
        messages.error(request, f"Not done: {error}.")
        return _back_to(request, run)
    shown = ", ".join(f"{key} {'unlimited' if limit is None else limit}" for key, limit in limits.items())
    if run.parked_by in (ParkedBy.BUDGET, ParkedBy.LOOP) and raised.status == RunStatus.QUEUED:
        messages.success(request, f"Budget raised ({shown}); the run was parked by its {run.parked_by} and goes on now.")
    else:
        messages.success(request, f"Budget raised ({shown}); the run keeps to the new limits from its next advance "
                                  "(a running one finishes this one under the old).")
    return _back_to(request, run)
