"""Run again with the same input: a button on a finished run's page that starts a new run of the
same agent with the same input, audited as a re-run of the old one."""

import re

import pytest

from runs import services
from runs.actors import Actor
from runs.engine import advance_run
from runs.models import AuditEntry, Run
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import messages_of

pytestmark = pytest.mark.django_db(transaction=True)

BUTTON = "Run again with the same input"


def finished_run():
    run = start_run("t_forkable", {"value": 3}, started_by=TEST, idempotency_key="first-run")
    advance_run(run.id)
    run = Run.objects.get(id=run.id)
    assert run.status == "succeeded"
    return run


def test_an_operator_runs_a_finished_run_again_and_lands_on_the_new_run(client, operator):
    run = finished_run()
    client.force_login(operator)
    page = client.get(f"/runs/{run.id}/").content.decode()
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page).group(1)

    response = client.post(f"/runs/{run.id}/run-again/", {"idempotency_key": key})

    again = Run.objects.exclude(id=run.id).get()
    assert BUTTON in page
    assert response.status_code == 302 and response.url == f"/runs/{again.id}/"
    assert (again.agent, again.input, again.status, again.started_by) == ("t_forkable", {"value": 3}, "queued", "user:otto")
    assert again.idempotency_key == key != run.idempotency_key
    assert messages_of(response) == [f"Started run {str(again.id)[:8]} of t_forkable with the same input as "
                                     f"run {str(run.id)[:8]}; that run is not changed."]
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id) == ("otto", "run_again", again.id)
    assert entry.details == {"agent": "t_forkable", "idempotency_key": key, "rerun_of": str(run.id)}
    assert Run.objects.get(id=run.id).status == "succeeded"


def test_a_double_click_starts_one_run(client, operator):
    run = finished_run()
    client.force_login(operator)

    for _ in range(2):
        client.post(f"/runs/{run.id}/run-again/", {"idempotency_key": "the-button-once"})

    assert Run.objects.count() == 2 and AuditEntry.objects.count() == 1


def test_htmx_is_sent_to_the_new_run(client, operator):
    run = finished_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/run-again/", headers={"HX-Request": "true"})

    again = Run.objects.exclude(id=run.id).get()
    assert response["HX-Redirect"] == f"/runs/{again.id}/"


def test_a_run_that_has_not_finished_shows_no_button_and_is_refused(client, operator):
    run = start_run("t_forkable", {"value": 3}, started_by=TEST)
    client.force_login(operator)

    page = client.get(f"/runs/{run.id}/").content.decode()
    response = client.post(f"/runs/{run.id}/run-again/")

    assert BUTTON not in page
    assert response.url == f"/runs/{run.id}/"
    assert messages_of(response) == ["Not started: only a finished run can be run again; this one is queued."]
    assert Run.objects.count() == 1 and not AuditEntry.objects.exists()


def test_a_viewer_sees_no_button_and_is_refused(client, viewer):
    run = finished_run()
    client.force_login(viewer)

    page = client.get(f"/runs/{run.id}/").content.decode()
    response = client.post(f"/runs/{run.id}/run-again/")

    assert BUTTON not in page and "Download history (JSON)" in page
    assert response.status_code == 403 and "This needs the operator role" in response.content.decode()
    assert Run.objects.count() == 1


def test_it_needs_post(client, operator):
    run = finished_run()
    client.force_login(operator)

    assert client.get(f"/runs/{run.id}/run-again/").status_code == 405


def test_a_rollback_run_is_not_run_again(operator):
    run = finished_run()
    undo = start_run("t_forkable", {"value": 3}, started_by=TEST, rollback_of_id=run.id)
    Run.objects.filter(id=undo.id).update(status="cancelled")  # (the trigger allows queued -> cancelled)

    assert services.available_actions(Run.objects.get(id=undo.id))["run_again"] is False
    with pytest.raises(services.ActionRefused, match="a rollback run cannot be run again"):
        services.run_again(undo.id, actor=Actor.for_user(operator))
