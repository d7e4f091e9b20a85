"""Approvals: a call that needs a person waits for them; decisions are bound, single, timely."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from runs import moves
from runs.actors import Actor
from runs.engine import advance_run, wait_until_settled
from runs.models import AuditEntry, JournalEntry, Run, RunEvent
from runs.moves import claim, start_run
from runs.sweeper import sweep
from runs.waits import WaitFor
from tests.agents import CALLS, KEYS
from tools.approvals import ApprovalError, decide, request_for
from tools.models import Approval

pytestmark = pytest.mark.django_db(transaction=True)


TEST = Actor.system("test")


def guarded_run(started_by=Actor("user", "otto")):
    run = start_run("t_guarded", {"value": 5}, started_by=started_by)
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def test_a_call_that_needs_approval_waits_without_starting(operator):
    run = guarded_run()

    approval = Approval.objects.get(run=run)
    assert (run.status, run.wait_kind, run.wait_ref) == ("waiting", "approval", str(approval.id))
    assert run.status_reason.startswith("waiting for approval of step 1 (t_irreversible)")
    assert approval.args == {"value": 5, "card_number": "***"}  # sensitive: redacted
    assert (approval.effect, approval.compensation, approval.started_by) == ("write", "", "user:otto")
    assert not JournalEntry.objects.filter(run=run).exists()
    assert CALLS["t_irreversible"] == 0


def test_approve_then_deny_the_agent_goes_on_and_receives_the_reason(operator, admin_user):
    run = guarded_run()
    first = Approval.objects.get(run=run)

    decide(first.id, "approve", actor=Actor.for_user(admin_user), shown_hash=first.form_hash)
    advance_run(run.id)
    second = Approval.objects.get(run=run, seq=2)
    decide(second.id, "deny", actor=Actor.for_user(admin_user), reason="never delete on a Friday", shown_hash=second.form_hash)
    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert run.status == "succeeded"
    assert run.output["charged"] == {"charged": 5, "card_ends": "11"}  # the real card, not "***"
    assert run.output["deleted"] == {"error": "denied: denied by operator: never delete on a Friday"}
    assert CALLS["t_delete"] == 0
    assert list(AuditEntry.objects.order_by("id").values_list("username", "action")) == [("ada", "approval_approved"), ("ada", "approval_denied")]


def test_approve_with_edited_arguments_runs_what_was_approved(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)

    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash,
           edited_args_text='{"value": 2, "card_number": "***"}')
    advance_run(run.id)

    outcome = JournalEntry.objects.get(run=run, seq=1, phase="outcome")
    assert outcome.result == {"charged": 2, "card_ends": "11"}  # edited value, the real card
    intent = JournalEntry.objects.get(run=run, seq=1, phase="intent")
    assert intent.args["value"] == 2


def test_an_edit_is_shown_as_a_diff_on_the_step_the_approval_the_record_and_the_audit(client, admin_user):
    """Fault found by a new user: approving with edits left no trace; the step showed the edited
    value and nothing said that an operator had changed 12900 to 100."""
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash,
           edited_args_text='{"value": 2, "card_number": "***"}')
    advance_run(run.id)

    entry = AuditEntry.objects.get(action="approval_approved")
    assert entry.details["changes"] == [{"field": "value", "from": 5, "to": 2}]
    assert entry.details["args"] == {"value": 5, "card_number": "***"}  # what the agent asked, redacted
    assert RunEvent.objects.filter(run=run, reason="approval of step 1 approved with edits: value 5 → 2").exists()
    diff = '<code>value</code> <del>5</del> → <ins>2</ins>'
    client.force_login(admin_user)
    step = client.get(f"/runs/{run.id}/").content.decode().split('id="step-1"')[1].split("</li>")[0]
    assert "approved with edits by user:ada" in step and diff in step
    assert diff in client.get(f"/tools/approvals/{approval.id}/").content.decode()
    assert diff in client.get("/audit/").content.decode()


def test_a_run_an_operators_denial_ended_is_shown_as_such_not_as_a_crash(client, operator, admin_user):
    """Fault found by a new user: a run that failed because an operator said no was a red
    failure like any crash. The run's error records the denial as data (who, which tool, why),
    and the run page and the runs list say "ended: NAME denied TOOL: REASON"."""
    run = guarded_run()  # t_guarded does not catch a denial of its first call
    approval = Approval.objects.get(run=run)
    decide(approval.id, "deny", actor=Actor.for_user(admin_user), reason="card reported stolen",
           shown_hash=approval.form_hash)
    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert run.status == "failed"
    assert run.error == {"type": "denied", "message": "denied by operator: card reported stolen",
                         "tool": "t_irreversible", "seq": 1, "denied_by": "user:ada", "reason": "card reported stolen"}
    assert run.ended_by_denial == {"by": "ada", "tool": "t_irreversible", "reason": "card reported stolen"}
    client.force_login(operator)
    ended = "ended: ada denied t_irreversible: card reported stolen"
    header = client.get(f"/runs/{run.id}/").content.decode().split('id="run-header"')[1].split("</section>")[0]
    assert ended in header and "status-denied" in header
    row = client.get("/").content.decode().split(f'id="run-{run.id}"')[1].split("</tr>")[0]
    assert ended in row and "status-denied" in row

    crashed = start_run("t_contract_breaker", {}, started_by=TEST)
    advance_run(crashed.id)
    assert Run.objects.get(id=crashed.id).ended_by_denial is None
    row = client.get("/").content.decode().split(f'id="run-{crashed.id}"')[1].split("</tr>")[0]
    assert "status-denied" not in row and "ended:" not in row


def test_an_edit_that_fails_the_schema_is_refused_and_changes_nothing(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)

    with pytest.raises(ApprovalError, match="the edited arguments do not fit 't_irreversible': value: Input should be greater than or equal to 0"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash, edited_args_text='{"value": -1}')
    with pytest.raises(ApprovalError, match="not valid JSON"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash, edited_args_text="{value: 1")

    assert Approval.objects.get(id=approval.id).status == "pending"


def test_a_second_decision_is_refused(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)

    with pytest.raises(ApprovalError, match="already approved by user:ada; a decision is taken once"):
        decide(approval.id, "deny", actor=Actor.for_user(admin_user), reason="changed my mind", shown_hash=approval.form_hash)


def test_approving_your_own_run_is_refused(operator):
    run = guarded_run(started_by=Actor("user", "otto"))
    approval = Approval.objects.get(run=run)

    with pytest.raises(ApprovalError, match="you started this run"):
        decide(approval.id, "approve", actor=Actor.for_user(operator), shown_hash=approval.form_hash)


def test_a_decision_bound_to_other_arguments_is_refused(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)

    with pytest.raises(ApprovalError, match="this form was not made for request"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash="0" * 64)


def test_approval_after_expiry_is_refused_and_recorded_as_the_systems(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    Approval.objects.filter(id=approval.id).update(expires_at=timezone.now() - timedelta(seconds=1))

    with pytest.raises(ApprovalError, match="this request expired at"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)

    approval.refresh_from_db()
    assert (approval.status, approval.decided_by) == ("expired", "system:expiry")
    advance_run(run.id)
    assert Run.objects.get(id=run.id).error == {
        "type": "approval_expired", "message": "nobody approved the call to 't_irreversible' before the request expired",
    }


def test_the_sweeper_expires_overdue_requests_and_the_run_goes_on():
    run = guarded_run()
    Approval.objects.filter(run=run).update(expires_at=timezone.now() - timedelta(seconds=1))

    sweep()

    assert Approval.objects.get(run=run).status == "expired"
    assert Run.objects.get(id=run.id).status == "queued"
    assert KEYS == {}


def test_sensitive_arguments_never_reach_the_pages(client, admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)
    advance_run(run.id)
    client.force_login(admin_user)

    for url in (f"/runs/{run.id}/", f"/tools/approvals/{approval.id}/"):
        page = client.get(url).content.decode()
        assert "4111111111111111" not in page, url
        assert "&quot;card_number&quot;: &quot;***&quot;" in page, url


def test_the_approval_forms_refuse_bad_input_with_a_message(client, admin_user, viewer):
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    client.force_login(admin_user)

    response = client.post(f"/tools/approvals/{approval.id}/decide/", {"decision": "deny", "reason": "", "shown_hash": approval.form_hash}, follow=True)
    assert b"Not done: denying needs a reason" in response.content
    response = client.post(f"/tools/approvals/{approval.id}/decide/", {"decision": "approve", "edited_args": "[1]", "shown_hash": approval.form_hash}, follow=True)
    assert b"must be a JSON object" in response.content
    client.force_login(viewer)
    assert client.post(f"/tools/approvals/{approval.id}/decide/", {"decision": "approve", "shown_hash": approval.form_hash}).status_code == 403
    assert Approval.objects.get(id=approval.id).status == "pending"


def test_an_operator_approves_a_delete_and_denies_another_in_the_browser(workers, operator, page, live_server_url):
    from playwright.sync_api import expect

    from tests.conftest import log_in, wait_for

    page.on("dialog", lambda dialog: dialog.accept())
    workers.start()
    approved = start_run("t_deleter", {"value": 1}, started_by=TEST)
    denied = start_run("t_deleter", {"value": 2}, started_by=TEST)
    log_in(page, live_server_url, "otto")
    wait_for(lambda: Approval.objects.count() == 2, what="two approval requests")
    page.goto(f"{live_server_url}/tools/approvals/")
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(page.locator("#pending-approvals")).to_have_text("2")

    page.goto(f"{live_server_url}/tools/approvals/{Approval.objects.get(run=approved).id}/")
    expect(page.get_by_text("nothing: irreversible")).to_be_visible()
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator("h1 .decision")).to_have_text("approved")

    page.goto(f"{live_server_url}/tools/approvals/{Approval.objects.get(run=denied).id}/")
    page.get_by_label("Reason for denying (the agent receives it)").fill("that record is evidence")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("h1 .decision")).to_have_text("denied")

    page.goto(f"{live_server_url}/runs/{denied.id}/")
    expect(page.locator("#run-header .status")).to_have_text("succeeded", timeout=20_000)
    expect(page.locator("#run-header")).to_contain_text("denied by operator: that record is evidence")
    assert Run.objects.get(id=approved.id).status in ("queued", "running", "succeeded")
    assert wait_until_settled_ok(approved)
    assert list(AuditEntry.objects.order_by("id").values_list("username", "action")) == [
        ("otto", "approval_approved"), ("otto", "approval_denied"),
    ]


def wait_until_settled_ok(run):
    return wait_until_settled(run.id, timeout=30).output == {"deleted": 1}


def test_an_approval_is_bound_to_the_call_it_was_made_for(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    # The code changes under the waiting run: the same seq now asks for another call.
    Approval.objects.filter(id=approval.id).update(args_hash="f" * 64)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=Approval.objects.get(id=approval.id).form_hash)

    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert run.status == "needs_attention"
    assert run.status_reason.startswith("nondeterminism at step 1: an approval was requested for tool 't_irreversible'")
    assert CALLS["t_irreversible"] == 0


def test_a_secret_cannot_be_edited_into_the_pages(admin_user):
    run = guarded_run()
    approval = Approval.objects.get(run=run)

    with pytest.raises(ApprovalError, match=r"sensitive fields cannot be edited here \(card_number\): leave them as \*\*\*"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash,
               edited_args_text='{"value": 5, "card_number": "5500000000000004"}')


def test_four_eyes_follows_a_child_run_to_whoever_started_its_parent(operator):
    parent = start_run("t_guarded_parent", {"value": 1}, started_by=Actor("user", "otto"))
    advance_run(parent.id)
    child = Run.objects.get(parent=parent)
    advance_run(child.id)
    approval = Approval.objects.get(run=child)

    assert approval.started_by == "user:otto"
    with pytest.raises(ApprovalError, match="you started this run"):
        decide(approval.id, "approve", actor=Actor.for_user(operator), shown_hash=approval.form_hash)


def test_a_decision_made_before_the_run_waits_is_not_lost(admin_user):
    """The window: the worker has made the request and is about to move the run to waiting;
    an operator decides in between. The move must see the decision, or nobody wakes the run."""
    run = start_run("t_deleter", {"value": 1}, started_by=TEST)
    lease = claim(run.id, "slow-worker")
    approval = request_for(run.id, 1, tool_name="t_delete", agent="t_deleter", args={"value": 1},
                           args_hash="a" * 64)
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)

    moved = moves.suspend(lease, WaitFor.approval(approval), agent="t_deleter")

    assert moved.status == "queued"  # not waiting: the decision was seen under the lock


def test_during_a_freeze_no_approval_is_requested(admin_user):
    from tools.freeze import lift_freeze, set_freeze
    from tools.models import FreezeState

    FreezeState.objects.get_or_create(id=1)
    set_freeze(reason="maintenance", actor=Actor("user", "ada"))
    run = start_run("t_deleter", {"value": 1}, started_by=TEST)
    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert (run.wait_kind, run.status_reason) == ("freeze", "frozen: maintenance")
    assert not Approval.objects.exists()
    lift_freeze(actor=Actor("user", "ada"))


def test_a_request_is_withdrawn_when_its_run_is_cancelled_and_a_decision_is_refused(client, operator, admin_user):
    """Fault found by a new user: cancelling a run that waited for approval left its request in
    the inbox, and Approve then said the run would make the call, and audited an approval."""
    from runs.services import cancel

    run = guarded_run()
    approval = Approval.objects.get(run=run)
    cancel(run.id, actor=Actor.for_user(operator), reason="wrong card")

    approval.refresh_from_db()
    assert (approval.status, approval.decided_by, approval.reason) == (
        "withdrawn", "user:otto", "withdrawn: the run was cancelled")
    with pytest.raises(ApprovalError, match="this request was withdrawn: the run was cancelled; there is nothing left"):
        decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)
    client.force_login(admin_user)
    inbox = client.get("/tools/approvals/")
    assert inbox.context["pending"] == []
    assert [a.status for a in inbox.context["decided"]] == ["withdrawn"]
    assert not AuditEntry.objects.filter(action__startswith="approval_").exists()


def test_the_demo_agent_adapts_to_a_denied_email(admin_user):
    """Fault found by a new user: denying the demo's email failed the whole run after the refund
    went out. The demo agent now finishes with the refund and a note, as agents may."""
    run = start_run("refund_customer", {"order_id": "A-1001", "think_seconds": 0}, started_by=TEST)
    advance_run(run.id)
    approval = Approval.objects.get(run=run)
    decide(approval.id, "deny", actor=Actor.for_user(admin_user), reason="the customer asked for no email",
           shown_hash=approval.form_hash)

    advance_run(run.id)
    run = Run.objects.get(id=run.id)

    assert run.status == "succeeded", run.error
    assert run.output["email_id"] is None
    assert run.output["note"] == "the email was not sent: denied by operator: the customer asked for no email"


def form_fields(page):
    """The hidden fields of the page's first decision form, as the browser would post them."""
    return dict(re.findall(r'<input type="hidden" name="(decision|shown_hash)" value="([^"]*)">', page)[:2])


def test_an_edit_that_leaves_out_a_secret_keeps_the_agents_secret(client, admin_user):
    """Issue 11, item 5: an edit without the sensitive field handed the tool the model's
    default ("4111") instead of the agent's card: a secret the approver never saw is kept."""
    run = guarded_run()
    approval = Approval.objects.get(run=run)
    client.force_login(admin_user)
    fields = form_fields(client.get(f"/tools/approvals/{approval.id}/").content.decode())

    response = client.post(f"/tools/approvals/{approval.id}/decide/",
                           {**fields, "edited_args": '{"value": 2}'}, follow=True)
    assert "Approved: the run goes on" in response.content.decode()
    advance_run(run.id)

    intent = JournalEntry.objects.get(run=run, seq=1, phase="intent")
    assert intent.args == {"value": 2, "card_number": "4111111111111111"}
    approval.refresh_from_db()
    assert approval.edited_args == {"value": 2, "card_number": "***"}
    assert approval.changes == [{"field": "value", "from": 5, "to": 2}]


def test_one_requests_form_cannot_decide_another_with_the_same_arguments(client, admin_user):
    """Issue 11, item 13: the form carried only the arguments' hash, so request A's form,
    posted to request B's address, decided B. The hash is now bound to the request."""
    first, second = guarded_run(), guarded_run()
    a, b = Approval.objects.get(run=first), Approval.objects.get(run=second)
    assert a.args_hash == b.args_hash
    client.force_login(admin_user)
    fields = form_fields(client.get(f"/tools/approvals/{a.id}/").content.decode())

    response = client.post(f"/tools/approvals/{b.id}/decide/", fields, follow=True)

    assert f"Not done: this form was not made for request {b.id} (step 1 of run {second.id})" in response.content.decode()
    assert list(Approval.objects.filter(id__in=[a.id, b.id]).values_list("status", flat=True)) == ["pending", "pending"]
    assert not AuditEntry.objects.exists()
    # A's form still decides A.
    client.post(f"/tools/approvals/{a.id}/decide/", fields)
    assert Approval.objects.get(id=a.id).status == "approved"
