"""What the database itself guarantees about runs and their journal."""

import pytest
from django.db import IntegrityError, connection, transaction

from runs import moves
from runs.engine import advance_run
from runs.models import JournalEntry, Run, RunEvent, RunStatus
from runs.moves import TRANSITIONS, IllegalTransition, start_run
from tests.agents import TEST

STATUSES = list(RunStatus.values)


def force_status(run_id, status):
    """Put a run in any status, bypassing the transition guard (setting up a case)."""
    running = status == "running"
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE runs_run DISABLE TRIGGER run_status_guard")
        cursor.execute(
            "UPDATE runs_run SET status = %s, requested = '', wake_at = NULL, wait_kind = %s,"
            " wait_ref = '', lease_owner = %s, lease_expires_at = CASE WHEN %s THEN now() ELSE NULL END"
            " WHERE id = %s",
            [status, "freeze" if status == "waiting" else "", "w" if running else "", running, run_id],
        )
        cursor.execute("ALTER TABLE runs_run ENABLE TRIGGER run_status_guard")


def database_allows(run_id, to):
    running = to == "running"
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE runs_run SET status = %s, lease_owner = %s, wait_kind = %s,"
                " lease_expires_at = CASE WHEN %s THEN now() ELSE NULL END WHERE id = %s",
                [to, "w" if running else "", "freeze" if to == "waiting" else "", running, run_id],
            )
        return True
    except IntegrityError as error:
        assert "illegal run transition" in str(error)
        return False


@pytest.mark.django_db
def test_the_database_allows_exactly_the_transitions_of_the_model():
    run = Run.objects.create(agent="t_protocol", input={"value": 1}, started_by="test")
    for origin in STATUSES:
        for to in STATUSES:
            if to == origin:
                continue
            force_status(run.id, origin)
            assert database_allows(run.id, to) == (to in TRANSITIONS[origin]), f"{origin} -> {to}"


@pytest.mark.django_db
def test_a_run_starts_queued():
    with pytest.raises(IntegrityError, match="a run starts queued, not running"):
        Run.objects.create(agent="t_protocol", input={}, started_by="test", status="running",
                           lease_owner="w", lease_expires_at="2026-01-01T00:00:00Z")


@pytest.mark.django_db
def test_an_illegal_transition_is_refused_in_python_with_a_clear_message():
    run = Run.objects.create(agent="t_protocol", input={}, started_by="test")

    with pytest.raises(IllegalTransition, match="a queued run cannot become succeeded"):
        moves.move(run.id, RunStatus.SUCCEEDED, actor=TEST)
    assert not RunEvent.objects.filter(run=run).exists()


@pytest.mark.django_db
def test_a_lease_exists_exactly_while_running():
    run = Run.objects.create(agent="t_protocol", input={}, started_by="test")

    with pytest.raises(IntegrityError, match="run_lease_only_while_running"):
        with transaction.atomic():
            Run.objects.filter(id=run.id).update(lease_owner="somebody")


@pytest.mark.django_db(transaction=True)
def test_journal_rows_cannot_be_updated_or_deleted():
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)
    advance_run(run.id)
    entry = JournalEntry.objects.filter(run=run).first()

    with pytest.raises(IntegrityError, match="runs_journalentry is append-only: UPDATE refused"):
        JournalEntry.objects.filter(id=entry.id).update(result={"forged": True})
    with pytest.raises(IntegrityError, match="runs_journalentry is append-only: DELETE refused"):
        JournalEntry.objects.filter(id=entry.id).delete()
    with pytest.raises(IntegrityError, match="runs_runevent is append-only: DELETE refused"):
        RunEvent.objects.filter(run=run).delete()
    entry.refresh_from_db()
    assert entry.result == {"read": 1}


@pytest.mark.django_db(transaction=True)
def test_a_run_with_a_journal_cannot_be_deleted():
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)
    advance_run(run.id)

    # Straight to the database, past Django's own PROTECT: the foreign key refuses it.
    with pytest.raises(IntegrityError, match="runs_journalentry"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM runs_run WHERE id = %s", [run.id])
    assert JournalEntry.objects.filter(run_id=run.id).count() == 10


@pytest.mark.django_db
def test_a_second_outcome_for_the_same_attempt_is_refused():
    run = Run.objects.create(agent="t_protocol", input={}, started_by="test")
    fields = dict(run=run, seq=1, attempt=1, phase="outcome", kind="tool", name="t_read",
                  args_hash="x", status="succeeded", actor="test")
    JournalEntry.objects.create(**fields)

    with pytest.raises(IntegrityError, match="journal_one_row_per_phase"):
        JournalEntry.objects.create(**fields)
