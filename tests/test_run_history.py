"""A run's history as a file: GET /runs/ID/history.json downloads the run, its journal, events,
approvals and audit entries as JSON."""

import json

import pytest

from runs.actors import Actor
from runs.engine import advance_run
from runs.models import JournalEntry, Run
from runs.moves import start_run
from tests.agents import TEST
from tools.approvals import decide
from tools.models import Approval

pytestmark = pytest.mark.django_db(transaction=True)


def guarded_run(admin_user):
    """A run with two steps that needed approval (one approved, one denied), a sensitive
    argument, and audit entries: t_guarded driven to its end in this process."""
    run = start_run("t_guarded", {"value": 5}, started_by=TEST)
    advance_run(run.id)
    first = Approval.objects.get(run=run)
    decide(first.id, "approve", actor=Actor.for_user(admin_user), shown_hash=first.form_hash)
    advance_run(run.id)
    second = Approval.objects.get(run=run, seq=2)
    decide(second.id, "deny", actor=Actor.for_user(admin_user), reason="not today", shown_hash=second.form_hash)
    advance_run(run.id)
    run = Run.objects.get(id=run.id)
    assert run.status == "succeeded"
    return run


def test_the_file_holds_the_run_its_journal_events_approvals_and_audit(client, viewer, admin_user):
    run = guarded_run(admin_user)
    client.force_login(viewer)

    response = client.get(f"/runs/{run.id}/history.json")

    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="run-{str(run.id)[:8]}-history.json"'
    history = json.loads(response.content)
    assert history["format"] == "agentops.run-history.v1"
    assert {key: history["run"][key] for key in ("id", "agent", "status", "input", "output", "error", "started_by")} == {
        "id": str(run.id), "agent": "t_guarded", "status": "succeeded", "input": {"value": 5},
        "output": run.output, "error": None, "started_by": "system:test",
    }
    assert history["run"]["created_at"] and history["run"]["started_at"] and history["run"]["finished_at"]

    rows = list(JournalEntry.objects.filter(run=run).order_by("seq", "attempt", "id"))
    assert [(row["seq"], row["attempt"], row["phase"], row["name"], row["status"]) for row in history["journal"]] == [
        (row.seq, row.attempt, row.phase, row.name, row.status) for row in rows
    ]
    assert [row["seq"] for row in history["journal"]] == sorted(row["seq"] for row in history["journal"])
    intent, outcome = [row for row in history["journal"] if row["name"] == "t_irreversible"]
    assert intent["phase"] == "intent" and intent["args"] == {"value": 5, "card_number": "***"}  # redacted, as on the page
    assert outcome["result"] == {"charged": 5, "card_ends": "11"} and outcome["status"] == "succeeded"
    assert intent["idempotency_key"] == outcome["idempotency_key"] != "" and outcome["actor"] and outcome["lease_epoch"]
    denied = next(row for row in history["journal"] if row["name"] == "t_delete" and row["phase"] == "outcome")
    assert denied["status"] == "failed" and "not today" in denied["error"]["message"]

    assert history["events"][0]["kind"] == "created"
    assert history["events"][-1]["to_status"] == "succeeded"
    assert [(event["from_status"], event["to_status"]) for event in history["events"]] == [
        (event.from_status, event.to_status) for event in run.events.order_by("at", "id")
    ]
    assert [(approval["seq"], approval["tool"], approval["status"], approval["decided_by"]) for approval in history["approvals"]] == [
        (1, "t_irreversible", "approved", "user:ada"), (2, "t_delete", "denied", "user:ada"),
    ]
    assert history["approvals"][0]["args"] == {"value": 5, "card_number": "***"}
    assert "private_args" not in history["approvals"][0]
    assert "4111111111111111" not in response.content.decode()
    assert [(entry["username"], entry["action"]) for entry in history["audit"]] == [
        ("ada", "approval_approved"), ("ada", "approval_denied"),
    ]


def test_the_run_page_links_the_file(client, viewer, admin_user):
    run = guarded_run(admin_user)
    client.force_login(viewer)

    page = client.get(f"/runs/{run.id}/").content.decode()

    assert f'<a href="/runs/{run.id}/history.json" download>Download history (JSON)</a>' in page


def test_it_needs_a_login(client, admin_user):
    run = guarded_run(admin_user)

    response = client.get(f"/runs/{run.id}/history.json")

    assert response.status_code == 302 and response.url.startswith("/login/")


def test_an_outsider_without_a_role_is_refused(client, outsider, admin_user):
    run = guarded_run(admin_user)
    client.force_login(outsider)

    assert client.get(f"/runs/{run.id}/history.json").status_code == 403


def test_an_unknown_run_is_not_found(client, viewer):
    client.force_login(viewer)

    assert client.get("/runs/00000000-0000-0000-0000-000000000001/history.json").status_code == 404
