"""The run pages' actions through the test client: permissions, refusals, audit."""

import pytest

from tests.conftest import messages_of

from runs.actors import Actor
from runs.engine import advance_run
from runs.moves import start_run
from tests.agents import TEST
from runs.models import AuditEntry, Run
from tests.agents import CRASH, Crash

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_run():
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def test_a_viewer_is_refused_every_action(client, viewer):
    run = waiting_run()
    client.force_login(viewer)

    for action in ("pause", "resume", "cancel"):
        response = client.post(f"/runs/{run.id}/{action}/", {"reason": "forged"})
        assert response.status_code == 403, action
    response = client.post(f"/runs/{run.id}/steps/1/resolve/", {"decision": "happened", "result": "{}"})
    assert response.status_code == 403
    assert Run.objects.get(id=run.id).status == "waiting"
    assert not AuditEntry.objects.exists()


def test_actions_need_post(client, operator):
    run = waiting_run()
    client.force_login(operator)

    assert client.get(f"/runs/{run.id}/pause/").status_code == 405


def test_pause_is_audited_with_the_user(client, operator):
    run = waiting_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/pause/", {"reason": "looking at it"})

    assert response.status_code == 302
    assert Run.objects.get(id=run.id).status == "paused"
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id, entry.reason) == ("otto", "pause", run.id, "looking at it")


def test_an_action_the_state_does_not_allow_is_refused_with_a_message(client, operator):
    run = waiting_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/resume/")

    assert messages_of(response) == ["Not done: only a paused run can be resumed; this one is waiting."]
    assert not AuditEntry.objects.exists()


def test_cancel_needs_a_reason(client, operator):
    run = waiting_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/cancel/", {"reason": "  "})

    assert messages_of(response) == ["Not done: cancelling needs a reason: say why the run should stop."]
    assert Run.objects.get(id=run.id).status == "waiting"


def in_doubt_run():
    CRASH["t_plain"] = "after"
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)
    with pytest.raises(Crash):
        advance_run(run.id)
    del CRASH["t_plain"]
    Run.objects.filter(id=run.id).update(lease_expires_at="2000-01-01T00:00:00Z")
    from runs.sweeper import sweep

    sweep()
    advance_run(run.id)
    assert Run.objects.get(id=run.id).status == "needs_attention"
    return run


def test_a_result_that_is_not_json_is_refused_and_changes_nothing(client, operator):
    run = in_doubt_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/steps/4/resolve/", {"decision": "happened", "result": "{sent: yes}"})

    assert messages_of(response)[0].startswith("The result is not valid JSON (Expecting property name enclosed in double quotes at line 1, column 2)")
    assert Run.objects.get(id=run.id).status == "needs_attention"


def test_failing_a_step_needs_a_reason(client, operator):
    run = in_doubt_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/steps/4/resolve/", {"decision": "fail", "reason": ""})

    assert messages_of(response) == ["Not done: failing a step needs a reason: the agent receives it as the tool's error."]


def test_an_unknown_decision_is_named(client, operator):
    run = in_doubt_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/steps/4/resolve/", {"decision": "maybe"})

    assert messages_of(response) == ["Not done: decision must be one of happened, run_again, fail, not 'maybe'."]


def test_deciding_a_step_is_audited(client, operator):
    run = in_doubt_run()
    client.force_login(operator)

    client.post(f"/runs/{run.id}/steps/4/resolve/", {"decision": "run_again", "reason": "not in the mail log"})

    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.details["seq"]) == ("otto", "resolve_run_again", 4)
    assert Run.objects.get(id=run.id).status == "queued"


def test_the_audit_page_filters_by_user_and_action(client, operator, viewer):
    run = waiting_run()
    AuditEntry.record(Actor.for_user(operator), "pause", run_id=run.id, reason="a")
    AuditEntry.record(Actor.for_user(viewer), "cancel", run_id=run.id, reason="b")
    client.force_login(viewer)

    by_otto = client.get("/audit/?user=otto").content
    assert b"<td>pause</td>" in by_otto and b"<td>cancel</td>" not in by_otto
    cancels = client.get("/audit/?action=cancel").content
    assert b"<td>vera</td>" in cancels and b"<td>otto</td>" not in cancels


def test_a_bad_page_link_or_status_filter_is_named(client, viewer):
    client.force_login(viewer)

    response = client.get("/?status=exploded&after=garbage")

    assert b"There is no status &#x27;exploded&#x27;; the page link is not valid, so this is the first page." in response.content


def test_an_unknown_run_is_a_friendly_404(client, viewer):
    client.force_login(viewer)

    response = client.get("/runs/00000000-0000-0000-0000-000000000009/")

    assert response.status_code == 404
    assert b"There is nothing at this address" in response.content
