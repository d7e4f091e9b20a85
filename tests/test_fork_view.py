"""Fork from a step through the run page: the control, the POST, the links between the runs."""

import pytest

from tests.conftest import messages_of
from django.template.loader import render_to_string

from runs.engine import advance_run
from runs.models import AuditEntry, JournalEntry, Run
from runs.moves import start_run
from runs.views import run_context
from tests.agents import TEST

pytestmark = pytest.mark.django_db(transaction=True)


def finished_run():
    run = start_run("t_forkable", {"value": 3}, started_by=TEST)
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def counts():
    return Run.objects.count(), JournalEntry.objects.count(), AuditEntry.objects.count()


def test_it_refuses_a_viewer(client, viewer):
    run = finished_run()
    before = counts()
    client.force_login(viewer)

    response = client.post(f"/runs/{run.id}/fork/1/", {"reason": "forged"})

    assert response.status_code == 403
    assert counts() == before


def test_it_needs_post(client, operator):
    run = finished_run()
    client.force_login(operator)

    assert client.get(f"/runs/{run.id}/fork/1/").status_code == 405


def test_an_operator_forks_with_an_edited_result_and_lands_on_the_new_run(client, operator):
    run = finished_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/fork/1/", {"result": '{"receipt_id": 42}', "reason": "wrong receipt"})

    fork = Run.objects.get(forked_from=run)
    assert response.status_code == 302 and response.url == f"/runs/{fork.id}/"
    assert messages_of(response) == [f"Forked: this new run keeps steps 1-1 of run {run.id} and continues from step 2."]
    assert JournalEntry.objects.get(run=fork).result == {"receipt_id": 42}
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id, entry.reason) == ("otto", "fork", run.id, "wrong receipt")
    assert entry.details == {"seq": 1, "edited": True, "fork": str(fork.id)}


def test_htmx_is_sent_to_the_new_run(client, operator):
    run = finished_run()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/fork/2/", {"reason": "again"}, headers={"HX-Request": "true"})

    fork = Run.objects.get(forked_from=run)
    assert response["HX-Redirect"] == f"/runs/{fork.id}/"
    assert fork.forked_at_seq == 2 and JournalEntry.objects.filter(run=fork).count() == 3


def test_a_result_that_is_not_json_is_named_and_changes_nothing(client, operator):
    run = finished_run()
    before = counts()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/fork/1/", {"result": '{\n  "receipt_id": 4,\n}', "reason": "typo"})

    assert response.status_code == 302 and response.url == f"/runs/{run.id}/"
    assert messages_of(response) == [
        "The edited result is not valid JSON (Expecting property name enclosed in double quotes at line 3, column 1); nothing was changed."
    ]
    assert counts() == before


def test_a_refusal_is_shown_on_the_run_and_changes_nothing(client, operator):
    run = finished_run()
    before = counts()
    client.force_login(operator)

    response = client.post(f"/runs/{run.id}/fork/1/", {"result": '{"receipt_id": "x"}', "reason": "typo"}, follow=True)

    assert response.redirect_chain == [(f"/runs/{run.id}/", 302)]
    assert "Not done: the edited result does not fit the output model of &#x27;t_receipt&#x27;: receipt_id" in response.content.decode()
    assert counts() == before


def test_the_run_page_shows_the_control_to_an_operator_only(client, operator, viewer):
    run = finished_run()

    client.force_login(operator)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert page.count(">Fork from here</button>") == 3
    assert f'action="/runs/{run.id}/fork/2/"' in page
    assert f"Start a new run of t_forkable that keeps steps 1-2 of this run and continues from step 3" in page
    # Only a tool step that succeeded may be given an edited result (steps 1 and 2, not the LLM call).
    assert 'id="fork-result-1"' in page and 'id="fork-result-2"' in page and 'id="fork-result-3"' not in page

    client.force_login(viewer)
    assert "Fork from here" not in client.get(f"/runs/{run.id}/").content.decode()


def test_the_live_step_fragment_carries_the_control(operator):
    run = finished_run()
    context = run_context(run, user=operator)

    html = render_to_string("runs/detail.html#step", {**context, "step": context["steps"][0], "user": operator})

    assert f'action="/runs/{run.id}/fork/1/"' in html


def test_the_fork_and_its_origin_link_each_other(client, operator):
    run = finished_run()
    client.force_login(operator)
    client.post(f"/runs/{run.id}/fork/2/", {"reason": "again"})
    fork = Run.objects.get(forked_from=run)

    fork_page = client.get(f"/runs/{fork.id}/").content.decode()
    origin_page = client.get(f"/runs/{run.id}/").content.decode()

    assert (
        f'<dt>Forked from</dt><dd><a href="/runs/{run.id}/"><code>{str(run.id)[:8]}</code></a> at step 2</dd>'
        in fork_page
    )
    assert (
        f'<dt>Forks</dt><dd><a href="/runs/{fork.id}/"><code>{str(fork.id)[:8]}</code></a> (at step 2)</dd>'
        in origin_page
    )
    assert "<dt>Forks</dt>" not in fork_page and "<dt>Forked from</dt>" not in origin_page
