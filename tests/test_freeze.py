"""The freeze: no write starts while it holds; reads go on; runs go on when it lifts."""

import pytest

from runs.actors import Actor
from runs.engine import advance_run, wait_until_settled
from runs.moves import start_run
from tests.agents import TEST
from runs.models import JournalEntry, Run
from tests.conftest import wait_for
from tools.freeze import FreezeError, lift_freeze, set_freeze
from tools.models import Freeze, FreezeState


@pytest.fixture
def freeze_state(transactional_db):
    FreezeState.objects.get_or_create(id=1)


def intents(**filters):
    return set(
        JournalEntry.objects.filter(phase="intent", effect__in=["write", "delete"], **filters).values_list("id", flat=True)
    )


def test_a_frozen_run_waits_before_its_first_write_and_goes_on_when_lifted(freeze_state):
    set_freeze(agent="f_writer", reason="code freeze for the release", actor=Actor("user", "ada"))
    run = start_run("f_writer", {"n": 2}, started_by=TEST)

    advance_run(run.id)

    run.refresh_from_db()
    assert (run.status, run.wait_kind) == ("waiting", "freeze")
    assert run.status_reason == "frozen: code freeze for the release"
    assert list(JournalEntry.objects.filter(run=run).values_list("seq", "phase", "name")) == [(1, "outcome", "f_read")]

    lift_freeze(agent="f_writer", actor=Actor("user", "ada"))

    run.refresh_from_db()
    assert run.status == "queued"
    advance_run(run.id)
    assert Run.objects.get(id=run.id).status == "succeeded"
    record = Freeze.objects.get()
    assert (record.set_by, record.lifted_by) == ("user:ada", "user:ada")


def test_a_freeze_of_another_agent_does_not_stop_this_one(freeze_state):
    set_freeze(agent="t_protocol", reason="their incident", actor=Actor("user", "ada"))
    run = start_run("f_writer", {"n": 1}, started_by=TEST)

    advance_run(run.id)

    assert Run.objects.get(id=run.id).status == "succeeded"


def test_bad_freeze_requests_are_refused_by_name(freeze_state):
    with pytest.raises(FreezeError, match="a freeze needs a reason"):
        set_freeze(reason="  ", actor=Actor("user", "ada"))
    set_freeze(reason="incident 42", actor=Actor("user", "ada"))
    with pytest.raises(FreezeError, match="everything is frozen already"):
        set_freeze(reason="again", actor=Actor("user", "ada"))
    with pytest.raises(FreezeError, match="agent 'x' is not frozen"):
        lift_freeze(agent="x", actor=Actor("user", "ada"))


def test_the_freeze_race_no_write_intent_commits_after_the_freeze(freeze_state, workers):
    """Workers keep starting write steps while a freeze is set from this process."""
    workers.start()
    workers.start(scheduler=False)
    workers.sweeper()
    first = [start_run("f_writer", {"n": 40}, started_by=TEST) for _ in range(4)]
    wait_for(lambda: len(intents()) >= 20, what="writes under way")

    from django.db import transaction

    with transaction.atomic():
        set_freeze(reason="stop the world", actor=Actor("user", "ada"))
        # Under the freeze's lock, before its commit: every intent that got in has committed
        # (the lock waited for it), and none can commit until after ours.
        at_freeze = intents()
    late = [start_run("f_writer", {"n": 3}, started_by=TEST) for _ in range(2)]
    # Reads go on: the late runs read, then wait at their first write.
    for run in late:
        wait_for(lambda: JournalEntry.objects.filter(run=run, name="f_read", phase="outcome").exists(),
                 what="a read during the freeze")
    wait_for(lambda: Run.objects.filter(status="waiting", wait_kind="freeze").count() == 6,
             timeout=30, what="every run waiting for the freeze")
    before_lift = intents()

    assert before_lift == at_freeze, "a write intent was committed after the freeze"
    assert not JournalEntry.objects.filter(run__in=late, phase="intent").exists()

    lift_freeze(actor=Actor("user", "ada"))
    for run in first + late:
        assert wait_until_settled(run.id, timeout=120).status == "succeeded"


def test_an_admin_freezes_from_the_page_a_run_waits_then_finishes_after_the_lift(freeze_state, workers, admin_user, page, live_server_url):
    from playwright.sync_api import expect

    from runs.models import AuditEntry
    from tests.conftest import log_in

    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, live_server_url, "ada")
    page.get_by_text("Freeze writes").click()
    page.get_by_label("Reason for the freeze").fill("database migration in progress")
    page.get_by_role("button", name="Freeze", exact=True).click()
    expect(page.locator("#freeze-banner")).to_contain_text("Writes are frozen for every agent: database migration in progress")

    workers.start()
    run = start_run("f_writer", {"n": 2}, started_by=Actor("user", "ada"))
    page.goto(f"{live_server_url}/runs/{run.id}/")
    expect(page.locator("#run-header .reason")).to_have_text("frozen: database migration in progress", timeout=20_000)
    expect(page.locator("#freeze-banner")).to_be_visible()

    page.get_by_role("button", name="Lift the freeze").click()
    expect(page.locator("#freeze-banner")).to_have_count(0)
    page.goto(f"{live_server_url}/runs/{run.id}/")
    expect(page.locator("#run-header .status")).to_have_text("succeeded", timeout=20_000)
    assert list(AuditEntry.objects.order_by("id").values_list("username", "action")) == [("ada", "freeze"), ("ada", "unfreeze")]


def test_an_operator_cannot_freeze(freeze_state, client, operator):
    client.force_login(operator)

    response = client.post("/tools/freeze/", {"reason": "I think we should"})

    assert response.status_code == 403
    assert FreezeState.objects.get(id=1).global_reason == ""


def test_a_freeze_without_a_reason_is_refused_with_a_message(freeze_state, client, admin_user):
    client.force_login(admin_user)

    response = client.post("/tools/freeze/", {"reason": " ", "next": "/tools/"}, follow=True)

    assert b"Not frozen: a freeze needs a reason" in response.content
    assert FreezeState.objects.get(id=1).global_reason == ""


def test_without_the_freeze_state_row_writes_refuse_rather_than_race(transactional_db):
    FreezeState.objects.all().delete()
    run = start_run("f_writer", {"n": 1}, started_by=TEST)

    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert (run.status, run.wait_kind) == ("waiting", "freeze")
    assert run.status_reason == "frozen: the freeze state is missing (run manage.py migrate)"
    assert not JournalEntry.objects.filter(run=run, phase="intent").exists()


def test_the_admin_refuses_a_second_freeze_and_an_unknown_agent_on_its_form(freeze_state, client, admin_user):
    client.force_login(admin_user)
    client.post("/admin/tools/freeze/add/", {"agent": "", "reason": "first"})

    again = client.post("/admin/tools/freeze/add/", {"agent": "", "reason": "second"}).content.decode()
    unknown = client.post("/admin/tools/freeze/add/", {"agent": "nobody", "reason": "x"}).content.decode()

    assert "everything is frozen already" in again
    assert "there is no agent &#x27;nobody&#x27;" in unknown
    assert Freeze.objects.count() == 1
