"""Setting and lifting a freeze: no write or delete starts while one covers a run.

The rule has one Python home, FreezeState.reason_for (tools/models.py), and one SQL check, in
the journal's write statement (runs/recorder.py), which the race needs: that statement locks
the FreezeState row FOR KEY SHARE when it writes the intent of a write or delete, and refuses
the intent while a freeze covers the run's agent. Setting a freeze locks that row FOR UPDATE,
in one transaction with its record: it waits for the intents in flight to commit, and every
intent after its commit sees it. So no write intent is recorded after a freeze has committed.
Reads go on.

A run that meets a freeze waits (a wait of kind freeze) without a worker; lifting the freeze
wakes those it no longer covers, and the sweeper wakes any it missed. Both actions are audited
here, whichever door they come through (a page, the admin).
"""

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from runs import live, moves
from runs.models import AuditEntry, WaitKind
from tools.models import Freeze, FreezeState, check_agent_name


class FreezeError(ValueError):
    pass


def _state(lock=True):
    # FOR UPDATE: it conflicts with the intents' FOR KEY SHARE, so it waits for those in flight.
    rows = FreezeState.objects.select_for_update() if lock else FreezeState.objects
    state, _ = rows.get_or_create(id=1)
    return state


def check_freeze(*, agent, reason, state=None):
    """What a freeze needs: a reason, a known agent (or none: every agent), no freeze of the
    same scope already. Raises FreezeError naming the problem; the admin's form asks too."""
    if not reason.strip():
        raise FreezeError("a freeze needs a reason: operators and agents' runs see it")
    try:
        check_agent_name(agent)
    except ValidationError as error:
        raise FreezeError(error.messages[0]) from None
    state = state or _state(lock=False)
    if state.global_reason if not agent else state.agents.get(agent):
        raise FreezeError(f"{'everything' if not agent else f'agent {agent!r}'} is frozen already")


def _scope(agent):
    return f"agent:{agent}" if agent else "everything"


def set_freeze(*, agent="", reason, actor):
    reason = reason.strip()
    with transaction.atomic():
        state = _state()
        check_freeze(agent=agent, reason=reason, state=state)
        if agent:
            state.agents = {**state.agents, agent: reason}
        else:
            state.global_reason = reason
        state.save()
        AuditEntry.record(actor, "freeze", target=_scope(agent), reason=reason)
        live.chrome_changed()  # every open page shows the banner
        return Freeze.objects.create(agent=agent, reason=reason, set_by=actor.label)


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
        Freeze.objects.filter(agent=agent, lifted_at__isnull=True).update(lifted_by=actor.label, lifted_at=timezone.now())
        AuditEntry.record(actor, "unfreeze", target=_scope(agent))
        live.chrome_changed()
    # Back to the queue: every run that waits for a freeze no longer covering it.
    return moves.wake_due(WaitKind.FREEZE, actor=actor, reason="the freeze was lifted")
