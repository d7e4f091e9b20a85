"""Fork from a step: the service, its refusals, and the forked run's replay, in this process."""

from datetime import timedelta

import pytest
from django.utils import timezone

from runs.actors import Actor
from runs.engine import advance_run
from runs.models import AuditEntry, JournalEntry, Run, RunEvent
from runs.moves import start_run
from runs.services import ActionRefused, Resolution, fork_run, resolve_step
from runs.sweeper import sweep
from tests.agents import CALLS, CRASH, KEYS, TEST, Crash
from tools.approvals import decide
from tools.models import Approval

pytestmark = pytest.mark.django_db(transaction=True)

OTTO = Actor("user", "otto")


def finished(agent, value=3):
    run = start_run(agent, {"value": value}, started_by=TEST)
    advance_run(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    return run


def advance(run):
    advance_run(run.id)
    run.refresh_from_db()
    return run


def journal(run):
    return list(JournalEntry.objects.filter(run=run).order_by("seq", "attempt", "id"))


def written():
    return Run.objects.count(), JournalEntry.objects.count(), AuditEntry.objects.count(), RunEvent.objects.count()


def test_a_fork_from_step_1_with_an_edited_result_runs_to_the_end_from_there():
    origin = finished("t_forkable", 3)
    assert CALLS["t_receipt"] == 1

    fork = fork_run(origin.id, 1, actor=OTTO, result={"receipt_id": 42}, reason="the receipt was wrong")

    assert (fork.agent, fork.input, fork.status) == ("t_forkable", {"value": 3}, "queued")
    assert (fork.forked_from_id, fork.forked_at_seq, fork.started_by) == (origin.id, 1, "user:otto")
    [copied] = journal(fork)
    assert (copied.seq, copied.phase, copied.kind, copied.name, copied.status) == (1, "outcome", "tool", "t_receipt", "succeeded")
    assert (copied.result, copied.actor) == ({"receipt_id": 42}, "user:otto")

    fork = advance(fork)

    assert fork.status == "succeeded", fork.error
    # The agent received the edited result and went on with it.
    assert fork.output["receipt"] == {"receipt_id": 42}
    assert fork.output["idem"] == {"idem": 42}
    assert fork.output["llm"]["content"] == "echo: receipt 42"
    # Step 1 was not called again; the later steps ran under the fork's own keys.
    assert CALLS["t_receipt"] == 1
    assert KEYS["t_idem"] == [f"{origin.id}:2", f"{fork.id}:2"]
    assert [row.idempotency_key for row in journal(fork) if row.kind == "tool" and row.phase == "outcome"] == [f"{origin.id}:1", f"{fork.id}:2"]
    # The origin is untouched.
    origin.refresh_from_db()
    assert origin.output["receipt"] == {"receipt_id": 3}
    assert journal(origin)[0].result == {"receipt_id": 3}


def test_a_fork_keeps_every_row_of_the_steps_up_to_n_and_repeats_none_of_them():
    origin = finished("t_protocol", 2)  # read, idem (intent+outcome), recon, plain, llm, now, uuid
    calls = dict(CALLS)

    fork = fork_run(origin.id, 4, actor=OTTO, reason="try the model again")

    fields = ("seq", "attempt", "phase", "kind", "name", "effect", "args", "args_hash",
              "idempotency_key", "status", "result", "error", "actor")
    expected = [tuple(getattr(row, f) for f in fields) for row in journal(origin) if row.seq <= 4]
    assert [tuple(getattr(row, f) for f in fields) for row in journal(fork)] == expected
    # The copied steps keep the origin's keys: they are history, and are never called again.
    assert {row.idempotency_key for row in journal(fork) if row.name == "t_plain"} == {f"{origin.id}:4"}

    fork = advance(fork)

    assert fork.status == "succeeded", fork.error
    for tool in ("t_read", "t_idem", "t_recon", "t_plain"):
        assert CALLS[tool] == calls[tool] == 1, tool
    assert CALLS["model"] == calls["model"] + 1
    assert {key: fork.output[key] for key in ("read", "idem", "recon", "plain")} == {
        key: origin.output[key] for key in ("read", "idem", "recon", "plain")
    }
    assert fork.output["uuid"] != origin.output["uuid"]
    assert [row.seq for row in journal(fork) if row.seq > 4] == [5, 6, 7]


def test_the_fork_is_audited_and_its_created_event_names_the_origin():
    origin = finished("t_forkable")

    fork = fork_run(origin.id, 1, actor=OTTO, reason="receipt was wrong", result={"receipt_id": 5})

    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id, entry.reason) == ("otto", "fork", origin.id, "receipt was wrong")
    assert entry.details == {"seq": 1, "edited": True, "fork": str(fork.id)}
    created = fork.events.get(kind="created")
    assert (created.actor, created.to_status, created.reason) == ("user:otto", "queued", "receipt was wrong")
    assert created.details == {"forked_from": str(origin.id), "seq": 1, "edited": True}
    fork_run(origin.id, 2, actor=OTTO, reason="again")
    assert AuditEntry.objects.latest("id").details["edited"] is False
    assert list(origin.forks.order_by("forked_at_seq").values_list("forked_at_seq", flat=True)) == [1, 2]


def test_an_edited_result_is_recorded_as_the_output_model_records_it():
    origin = finished("t_forkable")

    fork = fork_run(origin.id, 1, actor=OTTO, result={"receipt_id": "7"}, reason="typo")

    assert journal(fork)[0].result == {"receipt_id": 7}


def refused(message, *args, **kwargs):
    before = written()
    with pytest.raises(ActionRefused, match=message):
        fork_run(*args, **kwargs)
    assert written() == before


def test_it_refuses_without_a_reason():
    origin = finished("t_forkable")
    refused("forking needs a reason", origin.id, 1, actor=OTTO, reason="  ")


def test_it_refuses_a_step_that_does_not_exist():
    origin = finished("t_forkable")
    refused("has no step 0: its steps are 1 to 3", origin.id, 0, actor=OTTO, reason="why")
    refused("has no step 4: its steps are 1 to 3", origin.id, 4, actor=OTTO, reason="why")


def test_it_refuses_a_run_without_steps():
    run = start_run("t_forkable", {"value": 1}, started_by=TEST)
    refused("has no steps yet", run.id, 1, actor=OTTO, reason="why")


def plain_write_in_doubt():
    """A t_protocol run whose plain write (step 4) is in doubt, waiting for a person."""
    CRASH["t_plain"] = "after"
    run = start_run("t_protocol", {"value": 2}, started_by=TEST)
    with pytest.raises(Crash):
        advance_run(run.id)
    del CRASH["t_plain"]
    Run.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert sweep() == 1
    run = advance(run)
    assert run.status == "needs_attention"
    return run


def test_it_refuses_a_step_in_doubt_but_forks_from_the_step_before():
    run = plain_write_in_doubt()

    refused("step 4 is not complete: its intent is recorded and its outcome is not", run.id, 4, actor=OTTO, reason="why")
    fork = fork_run(run.id, 3, actor=OTTO, reason="before the doubt")
    assert [row.seq for row in journal(fork)] == [1, 2, 2, 3, 3]


def test_it_refuses_a_step_an_operator_abandoned_that_has_not_run_again():
    run = plain_write_in_doubt()
    resolve_step(run.id, 4, Resolution.RUN_AGAIN, actor=OTTO, reason="the mail server has no trace")

    refused("step 4 is not complete: an operator decided its last attempt did not happen", run.id, 4, actor=OTTO, reason="why")


def test_it_refuses_an_edit_of_a_failed_step():
    run = start_run("t_contract", {}, started_by=TEST)
    run = advance(run)
    assert JournalEntry.objects.get(run=run, seq=1).status == "failed"

    refused("step 1 failed, so it has no result to edit", run.id, 1, actor=OTTO, result={}, reason="why")
    fork = fork_run(run.id, 1, actor=OTTO, reason="a failed step is kept as it failed")
    assert journal(fork)[0].error == journal(run)[0].error


def test_it_refuses_an_edit_of_a_step_that_is_not_a_tool():
    origin = finished("t_forkable")
    refused(r"step 3 is not a tool step \(its kind is llm\): only a tool step's result can be edited", origin.id, 3, actor=OTTO,
            result={"content": "other"}, reason="why")


def test_it_refuses_an_edit_that_does_not_fit_the_output_model():
    origin = finished("t_forkable")
    refused("the edited result does not fit the output model of 't_receipt': receipt_id",
            origin.id, 1, actor=OTTO, result={"receipt_id": "forty-two"}, reason="why")


def test_it_refuses_a_rollback_run():
    origin = finished("t_forkable")
    rollback = Run.objects.create(agent="t_forkable", input={"value": 1}, started_by="cli", rollback_of=origin)
    refused("is a rollback run: it undoes another run's writes, and cannot be forked", rollback.id, 1, actor=OTTO, reason="why")


def test_a_child_started_at_a_kept_step_is_shared_with_the_origin():
    origin = advance(start_run("t_parent", {"value": 4}, started_by=TEST))  # step 1 starts the child
    child = Run.objects.get(parent=origin)
    assert (origin.status, origin.wait_ref) == ("waiting", str(child.id))

    fork = advance(fork_run(origin.id, 1, actor=OTTO, reason="wait for it again"))

    # The replay returns the recorded child id: no second child, and the fork waits for this one.
    assert Run.objects.filter(agent="t_child").count() == 1
    assert (fork.status, fork.wait_kind, fork.wait_ref) == ("waiting", "child", str(child.id))


def test_an_approval_decided_at_a_kept_step_is_not_asked_again():
    ada = Actor("user", "ada")
    origin = advance(start_run("t_guarded", {"value": 5}, started_by=TEST))
    decide(Approval.objects.get(run=origin, seq=1).id, "approve", actor=ada,
           shown_hash=Approval.objects.get(run=origin, seq=1).form_hash)
    origin = advance(origin)  # step 1 charged; step 2 (a delete) waits for its own approval
    assert origin.status == "waiting" and CALLS["t_irreversible"] == 1

    fork = advance(fork_run(origin.id, 1, actor=OTTO, reason="delete differently"))

    # Step 1 is replayed, not asked for or charged again; the fork's step 2 asks anew.
    assert CALLS["t_irreversible"] == 1
    assert not Approval.objects.filter(run=fork, seq=1).exists()
    assert (fork.status, fork.wait_kind) == ("waiting", "approval")
    assert Approval.objects.get(run=fork, seq=2).status == "pending"
