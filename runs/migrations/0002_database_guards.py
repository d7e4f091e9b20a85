"""Rules the database keeps by itself, so that no bug in Python can break them.

- Journal and event rows are append-only: UPDATE and DELETE are refused. (TRUNCATE, an owner's
  administrative act, is left alone; the test runner empties tables with it.)
- A run starts queued, and its status changes only along the moves of runs.models.TRANSITIONS
  as they stood when this migration was written (a test checks that the two agree).
"""

from django.db import migrations

TRANSITIONS = [
    ("queued", "running"), ("queued", "paused"), ("queued", "cancelled"),
    ("running", "succeeded"), ("running", "failed"), ("running", "cancelled"),
    ("running", "waiting"), ("running", "paused"), ("running", "needs_attention"),
    ("running", "queued"),
    ("waiting", "queued"), ("waiting", "paused"), ("waiting", "cancelled"),
    ("paused", "queued"), ("paused", "cancelled"), ("paused", "compensating"),
    ("needs_attention", "queued"), ("needs_attention", "cancelled"),
    ("needs_attention", "compensating"),
    ("failed", "compensating"), ("cancelled", "compensating"),
    ("compensating", "compensated"), ("compensating", "compensation_failed"),
]
PAIRS = ", ".join(f"('{a}', '{b}')" for a, b in TRANSITIONS)

SQL = f"""
CREATE FUNCTION agentops_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON runs_journalentry
    FOR EACH ROW EXECUTE FUNCTION agentops_append_only();
CREATE TRIGGER run_event_append_only BEFORE UPDATE OR DELETE ON runs_runevent
    FOR EACH ROW EXECUTE FUNCTION agentops_append_only();

CREATE FUNCTION agentops_run_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'queued' THEN
            RAISE EXCEPTION 'a run starts queued, not %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status
          AND (OLD.status, NEW.status) NOT IN ({PAIRS}) THEN
        RAISE EXCEPTION 'illegal run transition: % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER run_status_guard BEFORE INSERT OR UPDATE OF status ON runs_run
    FOR EACH ROW EXECUTE FUNCTION agentops_run_status_guard();
"""

REVERSE_SQL = """
DROP TRIGGER run_status_guard ON runs_run;
DROP FUNCTION agentops_run_status_guard();
DROP TRIGGER run_event_append_only ON runs_runevent;
DROP TRIGGER journal_append_only ON runs_journalentry;
DROP FUNCTION agentops_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("runs", "0001_initial")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
