"""Issue 11, item 6: secrets shown once a tool leaves the code. Redaction read only the code's
registry, so a removed tool's sensitive arguments appeared in clear on the run page and in
history.json. It now reads the tool's database row too (tools.models.Redactor), and fails
closed: a field the row does not describe is hidden for a tool no longer in the code, and the
arguments of a tool unknown to both are hidden wholesale."""

import json

import pytest

from runs.models import JournalEntry, Run
from tools.models import Redactor, Tool

pytestmark = pytest.mark.django_db(transaction=True)


def run_that_called(tool_name, args):
    """A run whose journal records one call of `tool_name` (as an older version of the
    code left it)."""
    run = Run.objects.create(agent="t_protocol", input={}, started_by="user:otto")
    for phase in ("intent", "outcome"):
        JournalEntry.objects.create(
            run=run, seq=1, phase=phase, kind="tool", name=tool_name, effect="write", args=args,
            args_hash="x", status="succeeded" if phase == "outcome" else "", actor="worker:w",
        )
    return run


def gone_tool():
    """A tool that left the code: its row stays (tools.sync marks it unregistered)."""
    return Tool.objects.create(
        name="t_gone", effect="write", sensitive_fields=["api_token"], registered=False,
        input_schema={"properties": {"api_token": {"type": "string"}, "amount": {"type": "integer"}}},
    )


def shown(client, viewer, run):
    client.force_login(viewer)
    page = client.get(f"/runs/{run.id}/").content.decode()
    history = json.loads(client.get(f"/runs/{run.id}/history.json").content)
    return page, history["journal"][0]["args"]


def test_a_removed_tools_recorded_secret_stays_hidden_on_the_page_and_in_the_history(client, viewer):
    gone_tool()
    run = run_that_called("t_gone", {"api_token": "tok-live-123456", "amount": 7})

    page, history_args = shown(client, viewer, run)

    assert "tok-live-123456" not in page
    assert "&quot;api_token&quot;: &quot;***&quot;" in page and "&quot;amount&quot;: 7" in page
    assert history_args == {"api_token": "***", "amount": 7}


def test_a_field_a_removed_tools_row_does_not_describe_is_hidden_too(client, viewer):
    gone_tool()
    run = run_that_called("t_gone", {"api_token": "tok", "old_password": "hunter2-hunter2", "amount": 7})

    page, history_args = shown(client, viewer, run)

    assert "hunter2-hunter2" not in page
    assert history_args == {"api_token": "***", "old_password": "***", "amount": 7}


def test_a_tool_unknown_to_the_code_and_the_database_has_every_argument_hidden(client, viewer):
    run = run_that_called("t_never_heard_of", {"password": "p4ss-w0rd-x", "note": "plain words"})

    page, history_args = shown(client, viewer, run)

    assert "p4ss-w0rd-x" not in page and "plain words" not in page
    assert history_args == {"password": "***", "note": "***"}


def test_a_tool_in_the_code_shows_what_is_not_secret_and_adds_the_rows_secrets():
    # t_irreversible declares card_number; a row that recorded another secret adds it.
    Tool.objects.filter(name="t_irreversible").update(sensitive_fields=["card_number", "value"])
    redact = Redactor(["t_irreversible", "t_read"])

    assert redact("t_irreversible", {"value": 5, "card_number": "4111"}) == {"value": "***", "card_number": "***"}
    assert redact("t_read", {"value": 5}) == {"value": 5}
