"""Setting and lifting a freeze: no write or delete starts while one covers a run.

The journal's write statement (runs/journal.py) locks the FreezeState row FOR KEY SHARE when it
writes the intent of a write or delete, and refuses the intent while a freeze covers the run's
agent. Setting a freeze locks that row FOR UPDATE, in one transaction with its record: it waits
for the intents in flight to commit, and every intent after its commit sees it. So no write
intent is recorded after a freeze has committed. Reads go on.

A run that meets a freeze waits ("frozen: REASON") without a worker; lifting the freeze wakes
them, and the sweeper wakes any it missed.
"""

from django.db import transaction
from django.utils import timezone

from runs.models import Run, RunStatus, transition
from django.core.exceptions import ValidationError

from tools.models import Freeze, FreezeState, check_agent_name

FROZEN = "frozen"


class FreezeError(ValueError):
    pass


def _state():
    # FOR UPDATE: it conflicts with the intents' FOR KEY SHARE, so it waits for those in flight.
    state, _ = FreezeState.objects.select_for_update().get_or_create(id=1)
    return state


def set_freeze(*, agent="", reason, actor):
    reason = reason.strip()
    if not reason:
        raise FreezeError("a freeze needs a reason: operators and agents' runs see it")
    try:
        check_agent_name(agent)
    except ValidationError as error:
        raise FreezeError(error.messages[0]) from None
    with transaction.atomic():
        state = _state()
        if (state.global_reason if not agent else state.agents.get(agent)):
            raise FreezeError(f"{'everything' if not agent else f'agent {agent!r}'} is frozen already")
        if agent:
            state.agents = {**state.agents, agent: reason}
        else:
            state.global_reason = reason
        state.save()
        return Freeze.objects.create(agent=agent, reason=reason, set_by=actor)


def lift_freeze(*, agent="", actor):
    with transaction.atomic():
        state = _state()
        if agent:
            if agent not in state.agents:
                raise FreezeError(f"agent {agent!r} is not frozen")
            state.agents = {name: why for name, why in state.agents.items() if name != agent}
        else:
            if not state.global_reason:
                raise FreezeError("there is no freeze of every agent to lift")
            state.global_reason = ""
        state.save()
        Freeze.objects.filter(agent=agent, lifted_at__isnull=True).update(lifted_by=actor, lifted_at=timezone.now())
    wake_unfrozen(actor=actor)


def frozen_reason_for(agent):
    state = FreezeState.objects.filter(id=1).first()
    return state.reason_for(agent) if state else ""


def wake_unfrozen(*, actor):
    """Back to the queue: every run that waits for a freeze no longer covering it."""
    woken = 0
    state = FreezeState.objects.filter(id=1).first()  # once, not once per run
    waiting = Run.objects.filter(status=RunStatus.WAITING, status_reason__startswith=f"{FROZEN}:")
    for run_id, agent in waiting.values_list("id", "agent"):
        if state is None or not state.reason_for(agent):
            if transition(run_id, RunStatus.QUEUED, expect={RunStatus.WAITING}, actor=actor, reason="the freeze was lifted"):
                woken += 1
    return woken
