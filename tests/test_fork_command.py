"""`manage.py fork_run`: the command line's door to services.fork_run."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from runs.engine import advance_run
from runs.models import AuditEntry, JournalEntry, Run
from runs.moves import start_run
from tests.agents import TEST

pytestmark = pytest.mark.django_db(transaction=True)


def finished_run():
    run = start_run("t_forkable", {"value": 3}, started_by=TEST)
    advance_run(run.id)
    return run


def test_it_prints_the_new_run_and_acts_as_the_user_it_names(operator):
    run = finished_run()
    out = StringIO()

    call_command("fork_run", str(run.id), "1", "--reason", "wrong receipt", "--result", '{"receipt_id": 9}',
                 "--user", "otto", stdout=out)

    fork = Run.objects.get(forked_from=run)
    assert out.getvalue().strip() == str(fork.id)
    assert fork.started_by == "user:otto"
    assert JournalEntry.objects.get(run=fork).result == {"receipt_id": 9}
    assert (AuditEntry.objects.get().username, AuditEntry.objects.get().action) == ("otto", "fork")


def test_a_refusal_is_a_command_error(operator):
    run = finished_run()

    with pytest.raises(CommandError, match="forking needs a reason"):
        call_command("fork_run", "--user", "otto", str(run.id), "1")
    with pytest.raises(CommandError, match="has no step 9: its steps are 1 to 3"):
        call_command("fork_run", "--user", "otto", str(run.id), "9", "--reason", "why")
    with pytest.raises(CommandError, match="--result is not JSON"):
        call_command("fork_run", "--user", "otto", str(run.id), "1", "--reason", "why", "--result", "{nope")
    with pytest.raises(CommandError, match="'nope' is not a run id"):
        call_command("fork_run", "--user", "otto", "nope", "1", "--reason", "why")
    assert Run.objects.count() == 1 and not AuditEntry.objects.exists()
