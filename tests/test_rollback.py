"""Rollback: the plan read off the journal, compensations as a run of their own, refusals."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from runs.actors import Actor
from runs.engine import advance_run
from runs.models import AuditEntry, JournalEntry, Run
from runs.moves import start_run
from runs.rollback import plan_for
from runs.services import ActionRefused, resolve_rollback, roll_back, rollback_plan
from runs.sweeper import sweep
from tests.conftest import messages_of
from tests.agents import CALLS, CRASH, KEYS, REVERSED, TEST, Crash, Value
from tools.models import Rule, Tool, ToolPermission

pytestmark = pytest.mark.django_db(transaction=True)

OTTO = Actor("user", "otto")


@pytest.fixture(autouse=True)
def notify_allowed():
    """t_notify is irreversible, so by default it would wait for approval."""
    ToolPermission.objects.create(tool=Tool.objects.get(name="t_notify"), rule=Rule.ALLOW)


def advance(run):
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def failed_saga(value=5):
    """A t_saga run, its child done, failed at its last step."""
    parent = advance(start_run("t_saga", {"value": value}, started_by=TEST))
    child = Run.objects.get(parent=parent)
    assert advance(child).status == "succeeded"
    parent = advance(parent)
    assert parent.status == "failed"
    return parent, child


def table(plan):
    return [(step.run_id, step.seq, step.tool, step.action, step.compensation, step.shown_args) for step in plan.steps]


def test_the_plan_lists_completed_writes_newest_first_with_children_before_earlier_steps():
    parent, child = failed_saga(5)
    p, c = str(parent.id), str(child.id)

    assert table(plan_for(parent)) == [
        (p, 7, "t_plain", "compensate", "t_undo", {"value": 0}),
        (p, 6, "t_deposit", "compensate", "t_reverse", {"value": 6}),
        (c, 1, "t_deposit", "compensate", "t_reverse", {"value": 15}),
        (p, 3, "t_notify", "irreversible", "", None),
        (p, 2, "t_deposit", "compensate", "t_reverse", {"value": 5}),
    ]
    # After a chosen step: only what came after it (the child started at step 4 is included).
    assert [(s.run_id, s.seq) for s in plan_for(parent, after_seq=3).steps] == [(p, 7), (p, 6), (c, 1)]
    assert [(s.run_id, s.seq) for s in plan_for(parent, after_seq=6).steps] == [(p, 7)]


def test_a_step_in_doubt_is_listed_and_must_be_resolved_first():
    CRASH["t_plain"] = "after"
    parent = advance(start_run("t_saga", {"value": 1}, started_by=TEST))
    advance(Run.objects.get(parent=parent))
    with pytest.raises(Crash):
        advance_run(parent.id)
    del CRASH["t_plain"]
    Run.objects.filter(id=parent.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    sweep()
    parent = advance(parent)
    assert parent.status == "needs_attention"

    assert [(s.seq, s.action) for s in plan_for(parent).steps][:2] == [(7, "in_doubt"), (6, "compensate")]
    with pytest.raises(ActionRefused, match=r"resolve the steps in doubt first: step 7 \(t_plain\)"):
        rollback_plan(parent)


def test_a_rollback_undoes_each_write_once_newest_first_and_the_run_is_compensated():
    parent, child = failed_saga(5)
    plan = rollback_plan(parent)

    undo = roll_back(parent.id, actor=OTTO, reason="wrong customer", shown_digest=plan.digest,
                     acknowledged=[f"{parent.id}:3"])
    parent.refresh_from_db()
    assert (parent.status, parent.status_reason) == ("compensating", "rolling back: wrong customer")
    assert (undo.agent, undo.rollback_of_id) == ("rollback", parent.id)

    undo = advance(undo)

    assert undo.status == "succeeded"
    assert REVERSED == [6, 15, 5]
    assert CALLS["t_reverse"] == 3
    assert len(set(KEYS["t_reverse"])) == 3 and all(k.startswith(f"{undo.id}:") for k in KEYS["t_reverse"])
    # Each compensation is a write of the rollback run: intent, then outcome.
    assert list(JournalEntry.objects.filter(run=undo, kind="tool").values_list("seq", "phase", "name")) == [
        (1, "intent", "t_undo"), (1, "outcome", "t_undo"),
        (2, "intent", "t_reverse"), (2, "outcome", "t_reverse"),
        (3, "intent", "t_reverse"), (3, "outcome", "t_reverse"),
        (4, "intent", "t_reverse"), (4, "outcome", "t_reverse"),
    ]
    parent.refresh_from_db()
    assert parent.status == "compensated"
    assert parent.error["type"] == "RuntimeError"  # why it failed is kept
    actions = list(AuditEntry.objects.filter(username="otto").values_list("action", flat=True))
    assert actions.count("rollback") == 1 and actions.count("approval_approved") == 4


def test_a_rollback_whose_worker_died_mid_compensation_finishes_with_none_twice():
    parent, _ = failed_saga(5)
    plan = rollback_plan(parent)
    CRASH["t_reverse"] = "before"  # the first t_reverse dies: in process, a Crash

    undo = roll_back(parent.id, actor=OTTO, reason="undo it", shown_digest=plan.digest,
                     acknowledged=[f"{parent.id}:3"])
    with pytest.raises(Crash):
        advance_run(undo.id)
    del CRASH["t_reverse"]
    Run.objects.filter(id=undo.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    sweep()
    undo = advance(undo)  # the idempotent compensation runs again with the same key

    assert undo.status == "succeeded"
    assert REVERSED == [6, 15, 5]
    assert KEYS["t_reverse"][0] == KEYS["t_reverse"][1]  # the retry kept its key
    assert Run.objects.get(id=parent.id).status == "compensated"


def test_a_compensation_that_fails_leaves_the_run_compensation_failed_naming_it():
    parent, child = failed_saga(5)
    plan = rollback_plan(parent)
    CRASH["t_reverse"] = "refuse 15"  # the child's deposit cannot be taken back

    undo = advance(roll_back(parent.id, actor=OTTO, reason="undo it", shown_digest=plan.digest,
                             acknowledged=[f"{parent.id}:3"]))

    assert undo.status == "succeeded"
    assert REVERSED == [6]  # the steps after the failure in the plan were not attempted
    assert undo.output["failed"] == {"run_id": str(child.id), "seq": 1, "compensation": "t_reverse"}
    assert [step["seq"] for step in undo.output["not_attempted"]] == [2]
    parent.refresh_from_db()
    assert parent.status == "compensation_failed"
    assert parent.status_reason == (
        f"the compensation of step 1 of child run {child.id} (t_reverse) failed: the bank refused to take "
        "back 15; 1 step(s) not attempted"
    )


def test_a_stopped_rollback_is_retried_then_goes_on_past_a_skipped_step():
    parent, child = failed_saga(5)
    plan = rollback_plan(parent)
    CRASH["t_reverse"] = "refuse 15"
    advance(roll_back(parent.id, actor=OTTO, reason="undo it", shown_digest=plan.digest,
                      acknowledged=[f"{parent.id}:3"]))
    assert Run.objects.get(id=parent.id).status == "compensation_failed"

    with pytest.raises(ActionRefused, match="skipping a compensation needs a reason"):
        resolve_rollback(parent.id, "skip", actor=OTTO)
    again = advance(resolve_rollback(parent.id, "retry", actor=OTTO))  # the bank still refuses
    assert again.input["compensations"][0]["seq"] == 1 and len(again.input["compensations"]) == 2
    assert Run.objects.get(id=parent.id).status == "compensation_failed"

    rest = advance(resolve_rollback(parent.id, "skip", actor=OTTO, reason="the bank will not take it back"))

    assert [c["seq"] for c in rest.input["compensations"]] == [2]
    assert rest.input["resolved"][0]["how"] == "skipped" and rest.input["resolved"][0]["by"] == "user:otto"
    assert REVERSED == [6, 5]
    assert Run.objects.get(id=parent.id).status == "compensated"
    assert list(AuditEntry.objects.filter(action__startswith="rollback_").order_by("id").values_list("action", flat=True)) == [
        "rollback_retry", "rollback_skip",
    ]


def test_a_last_compensation_marked_done_by_hand_ends_the_rollback():
    parent, _ = failed_saga(5)
    plan = rollback_plan(parent, after_seq=5)  # step 7 (t_undo) and step 6 (t_reverse 6)
    CRASH["t_reverse"] = "refuse 6"
    advance(roll_back(parent.id, actor=OTTO, reason="undo it", shown_digest=plan.digest, after_seq=5))
    assert Run.objects.get(id=parent.id).status == "compensation_failed"

    with pytest.raises(ActionRefused, match="marking a compensation done needs its result"):
        resolve_rollback(parent.id, "done", actor=OTTO)
    assert resolve_rollback(parent.id, "done", actor=OTTO, result={"reversed": 6}, reason="done at the bank") is None

    parent.refresh_from_db()
    assert parent.status == "compensated"
    assert parent.events.last().reason == "the last compensation was settled by hand: done at the bank"
    with pytest.raises(ActionRefused, match="not a rollback stopped at a failed step"):
        resolve_rollback(parent.id, "retry", actor=OTTO)


def test_a_fork_rolls_back_only_its_own_writes_not_those_it_holds_from_its_origin():
    from runs.services import fork_run

    parent, _ = failed_saga(5)
    fork = advance(fork_run(parent.id, 6, actor=OTTO, reason="try the end again"))
    assert fork.status == "failed"

    assert [(s.run_id, s.seq, s.tool) for s in plan_for(fork).steps] == [(str(fork.id), 7, "t_plain")]


def test_refusals_name_the_problem_and_change_nothing(operator):
    parent, _ = failed_saga(5)
    plan = rollback_plan(parent)
    before = (Run.objects.count(), AuditEntry.objects.count())

    with pytest.raises(ActionRefused, match="rolling back needs a reason"):
        roll_back(parent.id, actor=OTTO, reason=" ", shown_digest=plan.digest, acknowledged=[f"{parent.id}:3"])
    with pytest.raises(ActionRefused, match=r"acknowledge each step that cannot be undone first: step 3 \(t_notify\)"):
        roll_back(parent.id, actor=OTTO, reason="x", shown_digest=plan.digest)
    with pytest.raises(ActionRefused, match="the plan changed since it was shown"):
        roll_back(parent.id, actor=OTTO, reason="x", shown_digest="0" * 64, acknowledged=[f"{parent.id}:3"])
    with pytest.raises(ActionRefused, match=f"run {parent.id} has no step 99"):
        rollback_plan(parent, after_seq=99)
    with pytest.raises(ActionRefused, match="nothing to undo after step 7"):
        rollback_plan(parent, after_seq=7)
    assert (Run.objects.count(), AuditEntry.objects.count()) == before

    roll_back(parent.id, actor=OTTO, reason="x", shown_digest=plan.digest, acknowledged=[f"{parent.id}:3"])
    with pytest.raises(ActionRefused, match="a rollback of this run is already under way"):
        rollback_plan(Run.objects.get(id=parent.id))


def test_a_run_with_nothing_to_undo_or_still_running_is_refused():
    reads = advance(start_run("t_lengthy", {}, started_by=TEST))
    assert reads.status == "succeeded"
    with pytest.raises(ActionRefused, match="a succeeded run cannot be rolled back"):
        rollback_plan(reads)
    queued = start_run("t_saga", {"value": 1}, started_by=TEST)
    with pytest.raises(ActionRefused, match="a queued run cannot be rolled back; cancel it first"):
        rollback_plan(queued)


def test_an_agent_that_rolls_back_on_failure_is_rolled_back_with_the_same_plan():
    parent = advance(start_run("t_saga_auto", {"value": 5}, started_by=TEST))
    advance(Run.objects.get(parent=parent))
    parent = advance(parent)

    assert parent.status == "compensating"  # failed, then rolled back in the same transaction
    assert parent.status_reason == "rolling back: the agent rolls back when it fails"
    undo = parent.rollbacks.get()
    assert undo.started_by == "system:rollback-policy"
    assert [(c["seq"], c["compensation"]) for c in undo.input["compensations"]] == [
        (7, "t_undo"), (6, "t_reverse"), (1, "t_reverse"), (2, "t_reverse"),
    ]
    advance(undo)
    assert Run.objects.get(id=parent.id).status == "compensated"
    assert REVERSED == [6, 15, 5]
    assert CALLS["t_notify"] == 1  # irreversible: left as it is
    statuses = list(parent.events.filter(kind="transition").values_list("to_status", flat=True))
    assert statuses[-3:] == ["failed", "compensating", "compensated"]


def test_an_agent_that_rolls_back_on_failure_with_nothing_to_compensate_stays_failed():
    from runs.agents import agent as declare

    declare("t_reads_then_fails", on_failure="rollback")(_reads_then_fails)
    run = advance(start_run("t_reads_then_fails", {"value": 1}, started_by=TEST))

    assert run.status == "failed"
    assert not run.rollbacks.exists()
    note = run.events.get(actor="system:rollback-policy")
    assert note.reason == "no automatic rollback: nothing to compensate"


def _reads_then_fails(ctx, request: Value) -> None:
    ctx.tool("t_read", value=request.value)
    ctx.tool("t_fail", value=request.value)


def test_on_failure_takes_only_what_it_knows():
    from runs.agents import agent as declare

    with pytest.raises(ValueError, match="on_failure must be one of fail, rollback, not 'retry'"):
        declare("t_confused", on_failure="retry")


# The pages --------------------------------------------------------------------------------


def test_the_run_page_says_what_can_be_undone_and_leads_to_the_plan(client, operator):
    parent, _ = failed_saga(5)
    client.force_login(operator)

    page = client.get(f"/runs/{parent.id}/").content.decode()

    assert "irreversible: cannot be undone" in page  # step 3, t_notify
    assert "undone by t_reverse" in page
    assert f'href="/runs/{parent.id}/rollback/"' in page
    assert f'href="/runs/{parent.id}/rollback/?after=3"' in page


def test_the_plan_page_asks_for_each_irreversible_step_and_a_reason(client, operator):
    parent, _ = failed_saga(5)
    client.force_login(operator)

    page = client.get(f"/runs/{parent.id}/rollback/").content.decode()
    assert f'name="ack" value="{parent.id}:3" required' in page
    assert "Irreversible: cannot be undone" in page
    assert "Roll back 4 step(s)" in page

    digest = rollback_plan(parent).digest
    refused = client.post(f"/runs/{parent.id}/rollback/", {"digest": digest, "reason": "wrong order"}, follow=True)
    assert messages_of(refused) == [
        "Not rolled back: acknowledge each step that cannot be undone first: step 3 (t_notify)."
    ]
    assert Run.objects.get(id=parent.id).status == "failed"

    done = client.post(f"/runs/{parent.id}/rollback/",
                       {"digest": digest, "reason": "wrong order", "ack": f"{parent.id}:3"}, follow=True)
    assert messages_of(done)[0].startswith("Rolling back: run ")
    assert Run.objects.get(id=parent.id).status == "compensating"
    assert AuditEntry.objects.filter(username="otto", action="rollback", reason="wrong order").count() == 1


def test_a_viewer_cannot_see_the_plan_form_or_roll_back(client, viewer):
    parent, _ = failed_saga(5)
    client.force_login(viewer)

    assert client.get(f"/runs/{parent.id}/rollback/").status_code == 403
    digest = rollback_plan(parent).digest
    response = client.post(f"/runs/{parent.id}/rollback/", {"digest": digest, "reason": "x", "ack": f"{parent.id}:3"})
    assert response.status_code == 403
    assert Run.objects.get(id=parent.id).status == "failed"
    assert "Roll back" not in client.get(f"/runs/{parent.id}/").content.decode()


def test_the_plan_page_of_a_run_that_cannot_be_rolled_back_says_why(client, operator):
    run = advance(start_run("t_lengthy", {}, started_by=TEST))
    client.force_login(operator)

    page = client.get(f"/runs/{run.id}/rollback/").content.decode()

    assert "Nothing to roll back now" in page
    assert "A succeeded run cannot be rolled back" in page


def test_the_run_page_offers_the_ways_on_when_a_rollback_stopped(client, operator):
    parent, child = failed_saga(5)
    plan = rollback_plan(parent)
    CRASH["t_reverse"] = "refuse 15"
    advance(roll_back(parent.id, actor=OTTO, reason="undo it", shown_digest=plan.digest,
                      acknowledged=[f"{parent.id}:3"]))
    client.force_login(operator)

    page = client.get(f"/runs/{parent.id}/").content.decode()
    assert "The rollback stopped at step 1 (t_deposit)" in page
    assert "the bank refused to take back 15" in page
    assert all(button in page for button in ("Retry it", "Mark done", "Skip it"))

    bad = client.post(f"/runs/{parent.id}/rollback/resolve/", {"decision": "done", "result": "{oops"}, follow=True)
    assert messages_of(bad)[0].startswith("The result is not valid JSON")
    done = client.post(f"/runs/{parent.id}/rollback/resolve/",
                       {"decision": "skip", "reason": "the bank keeps it"}, follow=True)
    assert messages_of(done) == ["Skipped: that write stays done, and the rollback goes on with the rest."]
    assert Run.objects.get(id=parent.id).status == "compensating"


def test_under_a_freeze_a_rollback_waits_unless_an_admin_lets_it_run(admin_user, operator):
    from tools.freeze import lift_freeze, set_freeze

    parent, _ = failed_saga(5)
    plan = rollback_plan(parent, after_seq=5)
    set_freeze(reason="incident 7", actor=Actor.for_user(admin_user))

    with pytest.raises(ActionRefused, match="only an admin who may set and lift freezes"):
        roll_back(parent.id, actor=Actor.for_user(operator), reason="x", shown_digest=plan.digest, after_seq=5,
                  during_freeze=True)
    waits = advance(roll_back(parent.id, actor=OTTO, reason="undo", shown_digest=plan.digest, after_seq=5))
    assert (waits.status, waits.wait_kind) == ("waiting", "freeze")
    assert REVERSED == []
    lift_freeze(actor=Actor.for_user(admin_user))
    advance(waits)
    assert REVERSED == [6]

    other, _ = failed_saga(7)
    plan = rollback_plan(other, after_seq=5)
    set_freeze(reason="incident 8", actor=Actor.for_user(admin_user))
    repair = advance(roll_back(other.id, actor=Actor.for_user(admin_user), reason="a person's repair",
                               shown_digest=plan.digest, after_seq=5, during_freeze=True))

    assert repair.status == "succeeded" and repair.during_freeze
    assert REVERSED == [6, 8]
    assert Run.objects.get(id=other.id).status == "compensated"
    entry = AuditEntry.objects.get(action="rollback", run_id=other.id)
    assert entry.details["during_freeze"] is True and entry.username == "ada"
    lift_freeze(actor=Actor.for_user(admin_user))


def test_the_plan_page_under_a_freeze_offers_the_override_to_admins_only(client, admin_user, operator):
    from tools.freeze import lift_freeze, set_freeze

    parent, _ = failed_saga(5)
    set_freeze(reason="incident 9", actor=Actor.for_user(admin_user))
    client.force_login(operator)
    as_operator = client.get(f"/runs/{parent.id}/rollback/").content.decode()
    client.force_login(admin_user)
    as_admin = client.get(f"/runs/{parent.id}/rollback/").content.decode()

    assert "A freeze holds (incident 9)" in as_operator and 'name="during_freeze"' not in as_operator
    assert 'name="during_freeze"' in as_admin
    lift_freeze(actor=Actor.for_user(admin_user))


def test_a_run_that_has_not_stopped_is_cancelled_first_then_its_plan_shown(client, operator):
    parent = advance(start_run("t_saga", {"value": 5}, started_by=TEST))
    assert (parent.status, parent.wait_kind) == ("waiting", "child")  # its writes 2 and 3 done
    client.force_login(operator)
    assert "Cancel, then roll back" in client.get(f"/runs/{parent.id}/").content.decode()

    response = client.post(f"/runs/{parent.id}/rollback/", {"cancel_first": "1", "reason": "wrong customer"}, follow=True)

    assert Run.objects.get(id=parent.id).status == "cancelled"
    assert messages_of(response) == ["Cancelled to roll it back: the plan below is what would be undone."]
    page = response.content.decode()
    assert f'name="ack" value="{parent.id}:3" required' in page and "undone by <b>t_reverse</b>" in page
    assert AuditEntry.objects.get(action="cancel").reason == "to roll it back: wrong customer"


def test_the_sweeper_ends_a_rollback_whose_end_was_lost():
    parent, _ = failed_saga(5)
    plan = rollback_plan(parent)
    undo = advance(roll_back(parent.id, actor=OTTO, reason="undo", shown_digest=plan.digest,
                             acknowledged=[f"{parent.id}:3"]))
    assert undo.status == "succeeded"
    # The state a process that died between the rollback run's last commit and its after-commit
    # step leaves behind: the original still compensating (set up past the status guard).
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE runs_run DISABLE TRIGGER run_status_guard")
        cursor.execute("UPDATE runs_run SET status = 'compensating' WHERE id = %s", [parent.id])
        cursor.execute("ALTER TABLE runs_run ENABLE TRIGGER run_status_guard")

    sweep()

    parent.refresh_from_db()
    assert parent.status == "compensated"
    assert parent.events.last().actor == f"run:{undo.id}"

