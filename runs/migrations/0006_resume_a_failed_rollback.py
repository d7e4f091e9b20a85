"""A rollback that stopped at a failed compensation can go on: compensation_failed -> compensating
(an operator retries, or resolves the failed step and the rest runs), and compensation_failed ->
compensated (the failed step resolved, nothing left to run). The trigger of migration 0002 gets
the new table; runs.moves.TRANSITIONS is the same (a test checks that the two agree)."""

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
    ("compensation_failed", "compensating"), ("compensation_failed", "compensated"),
]


def guard(pairs):
    listed = ", ".join(f"('{a}', '{b}')" for a, b in pairs)
    return f"""
CREATE OR REPLACE FUNCTION agentops_run_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'queued' THEN
            RAISE EXCEPTION 'a run starts queued, not %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status
          AND (OLD.status, NEW.status) NOT IN ({listed}) THEN
        RAISE EXCEPTION 'illegal run transition: % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
"""


class Migration(migrations.Migration):
    dependencies = [("runs", "0005_rollbacks_and_forks")]

    operations = [migrations.RunSQL(guard(TRANSITIONS), guard(TRANSITIONS[:-2]))]
