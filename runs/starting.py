"""Pages that start runs: the start form (an agent chosen, its input filled in), and "Run again"
on a finished run. Both start through runs.services, which checks the role and audits."""

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from runs import services
from runs.actors import Actor
from runs.agents import AGENTS, ROLLBACK_AGENT, UnknownAgent, get_agent
from runs.models import Run
from runs.roles import permission_required
from runs.start_form import AgentInputForm, input_fields, new_idempotency_key

# The permission to start runs (the login is the middleware's); its 403 names the role.
operators_only = permission_required(services.START_PERMISSION)


def startable_agents():
    """Every registered agent a person may start, by name (the rollback agent starts only from
    a confirmed plan)."""
    return [AGENTS[name] for name in sorted(AGENTS) if name != ROLLBACK_AGENT]


@operators_only
def choose_agent(request: HttpRequest) -> HttpResponse:
    agents = [{"name": agent.name, "about": _about(agent), "has_form": input_fields(agent) is not None}
              for agent in startable_agents()]
    return render(request, "runs/start_choose.html", {"agents": agents})


@operators_only
def start_form(request: HttpRequest, agent_name: str) -> HttpResponse:
    if agent_name == ROLLBACK_AGENT:
        raise Http404("the rollback agent starts only from a run's Roll back… page")
    try:
        agent = get_agent(agent_name)
    except UnknownAgent as error:
        raise Http404(str(error)) from None
    form = AgentInputForm(agent, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        key = form.cleaned_data["idempotency_key"].strip() or None
        again = key is not None and Run.objects.filter(idempotency_key=key).exists()
        try:
            run = services.start_run_by(agent.name, form.input, actor=Actor.for_user(request.user), idempotency_key=key)
        except services.ActionRefused as error:
            form.add_error(None, f"Not started: {error}.")
            if again:  # the key started another run: a fresh one lets the operator send this input
                form.data = form.data.copy()
                form.data["idempotency_key"] = new_idempotency_key()
                form.add_error(None, "The form has a new idempotency key now: send it again to start a second run.")
        else:
            messages.success(request, "This form was sent before: here is the run it started." if again else
                             f"Started: run {str(run.id)[:8]} of {agent.name} is queued; a worker takes it next.")
            return redirect(run)
    return render(request, "runs/start.html", {"agent": agent, "about": _about(agent), "form": form})


@require_POST
@operators_only
def run_again(request: HttpRequest, run_id) -> HttpResponse:
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        raise Http404("there is no such run")
    try:
        new_run = services.run_again(run.id, actor=Actor.for_user(request.user),
                                     idempotency_key=request.POST.get("idempotency_key", "").strip() or None)
    except services.ActionRefused as error:
        messages.error(request, f"Not started: {error}.")
        new_run = run
    else:
        messages.success(request, f"Started run {str(new_run.id)[:8]} of {run.agent} with the same input as "
                                  f"run {str(run.id)[:8]}; that run is not changed.")
    url = new_run.get_absolute_url()
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def _about(agent):
    """The first paragraph of the agent's docstring, if it has one."""
    return (agent.fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
