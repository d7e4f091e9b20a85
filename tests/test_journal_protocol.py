"""The journal protocol, case by case, against the real database, in this process.

A worker's death is played by tests.agents.Crash, raised inside a tool: nothing in the runtime
catches it, so the journal is left exactly as a SIGKILL at that moment would leave it. (The same
cases with real processes and real SIGKILLs are in test_workers.py and `manage.py chaos`.)
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.agents import get_agent
from runs import moves
from runs.actors import Actor
from runs.context import Context
from runs.engine import advance_run, execute, wake_run
from runs.models import JournalEntry, Run, RunEvent
from runs.moves import Lease, claim, start_run
from runs.recorder import Recorder, load_journal
from runs.services import ActionRefused, Resolution, resolve_step, resume
from runs.services import cancel as request_cancel
from runs.services import pause as request_pause
from runs.sweeper import sweep

TEST = Actor.system("test")
from tests.agents import CALLS, CRASH, EFFECTS, KEYS, SHIFT, Crash

pytestmark = pytest.mark.django_db(transaction=True)


def start(agent, input=None, **kwargs):
    return start_run(agent, input if input is not None else {}, started_by=TEST, **kwargs)


def advance(run):
    advance_run(run.id)
    run.refresh_from_db()
    return run


def crash(run):
    """Advance until a tool plays dead; the run is left running, its lease still held."""
    with pytest.raises(Crash):
        advance_run(run.id)
    run.refresh_from_db()
    assert run.status == "running"
    return run


def expire_lease_and_sweep(run):
    Run.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert sweep() == 1
    run.refresh_from_db()
    assert run.status == "queued"
    return run


def plain_write_in_doubt(when):
    """A t_protocol run whose plain write (step 4) died "before" or "after" its effect, taken
    over by another worker: it needs attention."""
    CRASH["t_plain"] = when
    run = crash(start("t_protocol", {"value": 2}))
    del CRASH["t_plain"]
    run = advance(expire_lease_and_sweep(run))
    assert run.status == "needs_attention"
    return run


def rows(run, **filters):
    return list(JournalEntry.objects.filter(run=run, **filters).order_by("seq", "attempt", "id"))


def test_a_run_records_each_step_and_succeeds():
    run = advance(start("t_protocol", {"value": 3}))

    assert run.status == "succeeded"
    assert run.output["read"] == {"read": 3}
    assert run.output["llm"]["content"] == "echo: say 3"
    assert [(r.seq, r.phase, r.kind, r.name) for r in rows(run)] == [
        (1, "outcome", "tool", "t_read"),
        (2, "intent", "tool", "t_idem"), (2, "outcome", "tool", "t_idem"),
        (3, "intent", "tool", "t_recon"), (3, "outcome", "tool", "t_recon"),
        (4, "intent", "tool", "t_plain"), (4, "outcome", "tool", "t_plain"),
        (5, "outcome", "llm", "scripted"),
        (6, "outcome", "now", ""),
        (7, "outcome", "uuid", ""),
    ]
    assert KEYS["t_idem"] == [f"{run.id}:2"]
    assert run.lease_owner == "" and run.finished_at is not None


def test_a_read_journals_only_its_outcome():
    run = advance(start("t_protocol", {"value": 1}))

    read_rows = rows(run, seq=1)
    assert [(r.phase, r.status, r.args) for r in read_rows] == [("outcome", "succeeded", {"value": 1})]


def test_replaying_a_finished_run_calls_no_tool_and_no_model():
    run = advance(start("t_protocol", {"value": 5}))
    calls_before = dict(CALLS)
    agent = get_agent("t_protocol")

    # Replay with a lease that holds nothing: any write would be fenced, none is attempted.
    ctx = Context(Recorder(Lease(run.id, "replayer", epoch=-1), load_journal(run.id), agent=run.agent))
    replayed = agent.dump_output(agent.fn(ctx, agent.parse_input(run.input)))

    assert replayed == run.output  # the same clock reading, uuid and model answer too
    assert dict(CALLS) == calls_before


def test_a_read_that_died_runs_again():
    CRASH["t_read"] = "before"
    run = crash(start("t_protocol", {"value": 1}))
    assert rows(run) == []

    del CRASH["t_read"]
    run = advance(expire_lease_and_sweep(run))

    assert run.status == "succeeded"
    assert CALLS["t_read"] == 2


def test_an_idempotent_write_in_doubt_runs_again_with_the_same_key():
    CRASH["t_idem"] = "after"
    run = crash(start("t_protocol", {"value": 1}))
    assert [(r.seq, r.phase) for r in rows(run)] == [(1, "outcome"), (2, "intent")]

    del CRASH["t_idem"]
    run = advance(expire_lease_and_sweep(run))

    assert run.status == "succeeded"
    assert KEYS["t_idem"] == [f"{run.id}:2", f"{run.id}:2"]
    assert [(r.attempt, r.phase) for r in rows(run, seq=2)] == [(1, "intent"), (2, "intent"), (2, "outcome")]
    assert CALLS["t_read"] == 1  # the completed read was replayed, not repeated


def test_a_write_in_doubt_that_reconcile_says_happened_is_not_repeated():
    CRASH["t_recon"] = "after"
    run = crash(start("t_protocol", {"value": 4}))

    del CRASH["t_recon"]
    run = advance(expire_lease_and_sweep(run))

    assert run.status == "succeeded"
    assert CALLS["t_recon"] == 1
    assert run.output["recon"] == {"recon": 4, "reconciled": True}
    outcome = rows(run, seq=3, phase="outcome")[0]
    assert outcome.attempt == 1 and "reconciled" in outcome.actor


def test_a_write_in_doubt_that_reconcile_says_did_not_happen_runs_again():
    CRASH["t_recon"] = "before"
    run = crash(start("t_protocol", {"value": 4}))

    del CRASH["t_recon"]
    run = advance(expire_lease_and_sweep(run))

    assert run.status == "succeeded"
    assert CALLS["t_recon"] == 2
    assert run.output["recon"] == {"recon": 4}


def test_a_write_in_doubt_that_reconcile_cannot_tell_needs_attention():
    CRASH["t_recon"] = "after"
    run = crash(start("t_protocol", {"value": 4}))
    CRASH["t_recon_unknown"] = True

    run = advance(expire_lease_and_sweep(run))

    assert run.status == "needs_attention"
    assert "step 3 (write 't_recon') is in doubt" in run.status_reason


def test_a_plain_write_in_doubt_needs_attention_and_names_the_decision():
    CRASH["t_plain"] = "after"
    run = crash(start("t_protocol", {"value": 2}))
    del CRASH["t_plain"]

    run = advance(expire_lease_and_sweep(run))

    assert run.status == "needs_attention"
    assert run.status_reason.startswith("step 4 (write 't_plain') is in doubt")
    assert "it happened (give its result), run it again, or fail it" in run.status_reason
    assert CALLS["t_plain"] == 1
    assert JournalEntry.in_doubt(run.id).seq == 4


def test_an_operator_says_it_happened_and_the_agent_receives_the_result():
    run = plain_write_in_doubt("after")

    resolve_step(run.id, 4, Resolution.HAPPENED, actor=Actor("user", "otto"), result={"plain": 2, "by": "otto"},
                 reason="the email is in the sent folder")
    run = advance(run)

    assert run.status == "succeeded"
    assert run.output["plain"] == {"plain": 2, "by": "otto"}
    assert CALLS["t_plain"] == 1
    resolution = RunEvent.objects.get(run=run, kind="resolution")
    assert resolution.actor == "user:otto" and resolution.details == {"seq": 4, "decision": "happened"}


def test_an_operator_says_run_it_again_and_it_runs_with_the_same_key():
    run = plain_write_in_doubt("before")

    resolve_step(run.id, 4, Resolution.RUN_AGAIN, actor=Actor("user", "otto"), reason="not in the mail log")
    run = advance(run)

    assert run.status == "succeeded"
    assert KEYS["t_plain"] == [f"{run.id}:4", f"{run.id}:4"]
    assert [(r.attempt, r.phase, r.status) for r in rows(run, seq=4)] == [
        (1, "intent", ""), (1, "outcome", "abandoned"), (2, "intent", ""), (2, "outcome", "succeeded"),
    ]


def test_an_operator_fails_the_step_and_the_agent_receives_the_reason():
    run = plain_write_in_doubt("after")

    with pytest.raises(ActionRefused, match="needs a reason"):
        resolve_step(run.id, 4, Resolution.FAIL, actor=Actor("user", "otto"))
    resolve_step(run.id, 4, Resolution.FAIL, actor=Actor("user", "otto"), reason="customer unsubscribed")
    run = advance(run)

    assert run.status == "failed"
    assert run.error == {"type": "failed_by_operator", "message": "failed by operator: customer unsubscribed"}


def test_a_decision_on_a_run_that_waits_for_none_is_refused():
    run = advance(start("t_protocol", {"value": 2}))

    with pytest.raises(ActionRefused, match="is succeeded, not waiting for a decision"):
        resolve_step(run.id, 4, Resolution.HAPPENED, actor=Actor("user", "otto"), result={})


def test_a_decision_on_the_wrong_step_names_the_step_in_doubt():
    run = plain_write_in_doubt("after")

    with pytest.raises(ActionRefused, match="step 3 is not in doubt; step 4 is"):
        resolve_step(run.id, 3, Resolution.HAPPENED, actor=Actor("user", "otto"), result={})
    assert Run.objects.get(id=run.id).status == "needs_attention"


def test_a_reconcile_hook_that_fails_sends_the_run_to_a_person():
    CRASH["t_recon"] = "after"
    run = crash(start("t_protocol", {"value": 4}))
    del CRASH["t_recon"]
    CRASH["t_recon_raises"] = True

    run = advance(expire_lease_and_sweep(run))

    assert run.status == "needs_attention"
    assert "reconcile hook failed (ConnectionError: the payment provider did not answer)" in run.status_reason
    assert CALLS["t_recon"] == 1


def test_a_request_pending_when_the_lease_expires_is_honoured():
    CRASH["t_idem"] = "after"
    run = crash(start("t_protocol", {"value": 1}))
    request_cancel(run.id, actor=Actor("user", "otto"), reason="stop it")
    Run.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    sweep()

    run.refresh_from_db()
    assert run.status == "cancelled"
    assert run.status_reason == ""
    assert RunEvent.objects.filter(run=run, to_status="cancelled", actor="system:sweeper").exists()


def test_nondeterminism_is_reported_with_both_steps_named():
    SHIFT["second"] = "sleep"
    run = advance(start("t_shifty"))
    assert run.status == "waiting"

    SHIFT["second"] = "tool"  # the code changes under the live run
    moves.move(run.id, "queued", actor=TEST, reason="woken early")
    run = advance(run)

    assert run.status == "needs_attention"
    assert "nondeterminism at step 2: the journal has sleep (arguments" in run.status_reason
    assert "but the code now asks for tool 't_idem' (arguments" in run.status_reason
    assert CALLS["t_idem"] == 0


def test_contract_errors_name_the_problem_and_reach_the_agent_once():
    run = advance(start("t_contract"))

    assert run.status == "succeeded"
    errors = run.output
    assert errors["no_such_tool[('value', 1)]"].startswith("contract: unknown tool 'no_such_tool'")
    assert "value: Input should be greater than or equal to 0" in errors["t_read[('value', -1)]"]
    assert "value: Field required" in errors["t_read[]"]
    assert errors["t_fail"] == "RuntimeError: the service refused 7"
    assert CALLS["t_read"] == 0  # contract errors never reach the tool
    assert all(r.status == "failed" and r.phase == "outcome" for r in rows(run))


def test_a_sleep_releases_the_worker_and_keeps_its_deadline_on_replay(monkeypatch):
    run = advance(start("t_sleeper", {"seconds": 60, "steps": 1}))

    assert run.status == "waiting"
    assert run.wake_at is not None and run.status_reason.startswith("sleeping until")
    deadline = rows(run, seq=2)[0].args["wake_at"]

    # Woken too early (a spurious wake): it waits again, for the same deadline.
    moves.move(run.id, "queued", actor=TEST, expect={"waiting"})
    run = advance(run)
    assert run.status == "waiting"
    assert run.wake_at.isoformat() == deadline

    later = timezone.now() + timedelta(minutes=2)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert wake_run(run.id) == "woken"
    run = advance(run)
    assert run.status == "succeeded"
    assert CALLS["t_read"] == 1


def test_a_child_run_is_started_once_and_its_parent_waits_for_it(monkeypatch):
    parent = advance(start("t_parent", {"value": 21}))
    assert parent.status == "waiting"
    child = Run.objects.get(parent=parent)
    assert child.started_by == f"run:{parent.id}"

    child = advance(child)  # the child sleeps half a second
    assert child.status == "waiting"
    later = timezone.now() + timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert wake_run(child.id) == "woken"
    child = advance(child)
    assert child.status == "succeeded"

    parent.refresh_from_db()
    assert parent.status == "queued"  # woken by its child
    parent = advance(parent)
    assert parent.status == "succeeded"
    assert parent.output == {"child": str(child.id), "output": 42}
    assert Run.objects.filter(parent=parent).count() == 1


def test_a_failed_child_reaches_its_parent_as_an_error():
    parent = advance(start("t_failing_child_parent"))
    child = advance(Run.objects.get(parent=parent))
    assert child.status == "failed"

    parent = advance(parent)

    assert parent.status == "succeeded"
    assert "ended failed: this child always fails" in parent.output


def test_pause_is_honoured_at_the_next_step_boundary_and_resume_goes_on():
    run = start("t_sleeper", {"seconds": 0, "steps": 3})
    # Claim as a worker would, then ask for a pause while it runs.
    lease = claim(run.id, "test-worker")
    request_pause(run.id, actor=Actor("user", "otto"), reason="checking something")

    assert execute(lease) == "paused"
    run.refresh_from_db()
    # The read in flight completed and was recorded; the sleep's intent was not written.
    assert [(r.seq, r.phase, r.kind) for r in rows(run)] == [(1, "outcome", "tool")]
    assert run.status_reason == "paused by an operator's request"

    resume(run.id, actor=Actor("user", "otto"))
    run = advance(run)
    assert run.status == "succeeded"
    assert CALLS["t_read"] == 3
    assert [e.to_status for e in RunEvent.objects.filter(run=run, kind="transition")] == [
        "running", "paused", "queued", "running", "succeeded",
    ]
    request = RunEvent.objects.get(run=run, kind="request")
    assert (request.actor, request.reason, request.details) == ("user:otto", "checking something", {"requested": "pause"})


def test_cancel_of_a_running_run_stops_before_the_next_intent():
    run = start("t_protocol", {"value": 1})
    lease = claim(run.id, "test-worker")
    request_cancel(run.id, actor=Actor("user", "otto"), reason="wrong customer")

    assert execute(lease) == "cancelled"
    assert [(r.seq, r.phase) for r in rows(run)] == [(1, "outcome")]
    assert CALLS["t_idem"] == 0


def test_cancel_of_a_waiting_run_is_immediate():
    run = advance(start("t_sleeper", {"seconds": 3600}))
    assert run.status == "waiting"

    request_cancel(run.id, actor=Actor("user", "otto"), reason="not needed")
    run.refresh_from_db()

    assert run.status == "cancelled" and run.wake_at is None
    event = RunEvent.objects.filter(run=run).last()
    assert (event.actor, event.reason) == ("user:otto", "not needed")


def test_a_worker_that_lost_its_lease_cannot_write():
    run = start("t_protocol", {"value": 1})
    stale = claim(run.id, "stale-worker")
    Run.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    sweep()
    fresh = claim(run.id, "fresh-worker")
    assert fresh.epoch == stale.epoch + 1

    assert execute(stale) == "fenced"
    assert rows(run) == []
    assert execute(fresh) == "succeeded"
    assert EFFECTS  # the fresh worker did the work


def test_a_parent_waits_for_the_child_it_named_and_the_sweeper_wakes_it_for_no_other():
    """Fault found by a new user: with one child cancelled and another still waiting, the
    sweeper re-queued the parent every pass ("a child run finished"), minutes on end."""
    parent = advance(start("t_two_children", {"value": 1}))
    first, second = Run.objects.filter(parent=parent).order_by("created_at")
    assert (parent.status, parent.wait_kind, parent.wait_ref) == ("waiting", "child", str(second.id))
    advance(first)
    request_cancel(first.id, actor=Actor("user", "otto"), reason="not needed")
    events = RunEvent.objects.filter(run=parent).count()

    for _ in range(3):
        sweep()

    parent.refresh_from_db()
    assert (parent.status, parent.wait_ref) == ("waiting", str(second.id))
    assert RunEvent.objects.filter(run=parent).count() == events


def test_a_cancel_that_follows_a_pause_is_the_one_honoured():
    """The worker saw the pause; the operator cancelled before its last move. The cancel wins,
    as the page promised ("the run stops at its next step boundary and does not continue")."""
    run = start("t_protocol", {"value": 1})
    lease = claim(run.id, "test-worker")
    request_pause(run.id, actor=Actor("user", "otto"), reason="a look first")
    request_cancel(run.id, actor=Actor("user", "otto"), reason="no, stop it")

    moved = moves.move(run.id, "paused", actor=TEST, epoch=lease.epoch)
    assert (moved.done, moved.pending) == (False, "cancel")

    assert execute(lease) == "cancelled"
    assert Run.objects.get(id=run.id).status == "cancelled"


def test_approved_arguments_that_no_longer_fit_fail_the_rerun_as_its_next_attempt(admin_user):
    """A step abandoned by an operator runs again with what was approved; if that no longer
    fits the tool, its next attempt fails (it used to collide with attempt 1 and loop)."""
    from tools.approvals import decide
    from tools.models import Approval

    run = advance(start("t_guarded", {"value": 3}))
    approval = Approval.objects.get(run=run)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash,
           edited_args_text='{"value": 4, "card_number": "***"}')
    CRASH["t_irreversible"] = "before"
    run = crash(run)
    del CRASH["t_irreversible"]
    run = advance(expire_lease_and_sweep(run))
    assert run.status == "needs_attention"
    resolve_step(run.id, 1, Resolution.RUN_AGAIN, actor=Actor("user", "otto"), reason="not in the ledger")
    Approval.objects.filter(id=approval.id).update(edited_args={"value": -1, "card_number": "***"})

    run = advance(run)

    assert run.status == "failed"
    assert run.error["type"] == "contract"
    assert [(r.attempt, r.phase, r.status) for r in rows(run, seq=1)] == [
        (1, "intent", ""), (1, "outcome", "abandoned"), (2, "outcome", "failed"),
    ]


def test_a_tool_or_a_model_request_may_use_the_api_s_own_parameter_names():
    """Fault found by a new user: a tool argument called `name` broke every run
    (`Context.tool() got multiple values for argument 'name'`)."""
    run = advance(start("t_awkward_agent", {}))

    assert run.status == "succeeded", run.error
    assert run.output["tool"] == {"name": "a", "provider": "b", "self": 3, "kind": "c"}


def test_the_command_line_takes_the_short_id_the_pages_show_and_says_what_a_run_waits_for(operator):
    """Faults found by a new user: resolve_step refused the 8-character ids the pages show, and
    said "is waiting, not waiting for a decision" without saying what the run waits for."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    run = plain_write_in_doubt("after")
    call_command("resolve_step", str(run.id)[:8], "4", "happened", "--result", '{"plain": 2}', "--user", "otto")
    assert advance(run).status == "succeeded"

    sleeper = advance(start("t_sleeper", {"seconds": 3600}))
    with pytest.raises(CommandError, match=r"is waiting \(sleeping until .*\), not waiting for a decision on a step"):
        call_command("resolve_step", str(sleeper.id)[:8], "1", "fail", "--reason", "x", "--user", "otto")
    with pytest.raises(CommandError, match="there is no run 'abcd1234'"):
        call_command("resolve_step", "abcd1234", "1", "fail", "--reason", "x", "--user", "otto")
    with pytest.raises(CommandError, match="'zz' is not a run id"):
        call_command("resolve_step", "zz", "1", "fail", "--reason", "x", "--user", "otto")
