"""Fault 8 (issue 10): the command line acted as anyone. Its operator actions now name a real
user (--user, or a user named like the operating-system account), check that user's role as
the pages do, and are audited in that user's name by the service that acts."""

import getpass

import pytest
from django.core.management import CommandError, call_command

from runs.engine import advance_run
from runs.models import AuditEntry, Run
from runs.moves import start_run
from runs.roles import OPERATOR
from tests.agents import TEST
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


def finished_run():
    run = start_run("t_forkable", {"value": 3}, started_by=TEST)
    advance_run(run.id)
    return run


def fork(run, *user):
    call_command("fork_run", str(run.id), "1", "--reason", "wrong receipt", *user)


def nothing_done(run):
    return not AuditEntry.objects.exists() and not Run.objects.filter(forked_from=run).exists()


def test_an_unknown_user_is_refused_by_name():
    run = finished_run()

    with pytest.raises(CommandError, match="there is no agentops user 'mallory'"):
        fork(run, "--user", "mallory")
    with pytest.raises(CommandError, match="there is no agentops user 'mallory'"):
        call_command("resolve_step", str(run.id), "1", "fail", "--reason", "x", "--user", "mallory")
    with pytest.raises(CommandError, match="there is no agentops user 'mallory'"):
        call_command("start_run", "t_forkable", "--input", '{"value": 1}', "--user", "mallory")
    assert nothing_done(run) and Run.objects.count() == 1


def test_without_user_and_without_a_user_named_like_the_os_account_it_says_to_name_one():
    run = finished_run()

    with pytest.raises(CommandError, match=r"say who acts with --user NAME: there is no agentops user named after "
                                           rf"your operating-system account \({getpass.getuser()}\)"):
        fork(run)
    assert nothing_done(run)


def test_a_viewer_is_refused_naming_the_role_needed(viewer):
    run = finished_run()

    with pytest.raises(CommandError, match="user 'vera' may not fork a run: that needs the operator role"):
        fork(run, "--user", "vera")
    with pytest.raises(CommandError, match="user 'vera' may not resolve a step in doubt: that needs the operator role"):
        call_command("resolve_step", str(run.id), "1", "fail", "--reason", "x", "--user", "vera")
    with pytest.raises(CommandError, match="user 'vera' may not start runs: that needs the operator role"):
        call_command("start_run", "t_forkable", "--input", '{"value": 1}', "--user", "vera")
    assert nothing_done(run) and Run.objects.count() == 1


def test_an_inactive_operator_is_refused():
    run = finished_run()
    make_user("gone", OPERATOR, is_active=False)

    with pytest.raises(CommandError, match="user 'gone' is inactive"):
        fork(run, "--user", "gone")
    assert nothing_done(run)


def test_an_operator_acts_and_is_audited_in_their_name(operator):
    run = finished_run()

    fork(run, "--user", "otto")

    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id) == ("otto", "fork", run.id)
    assert Run.objects.get(forked_from=run).started_by == "user:otto"


def test_the_os_account_acts_when_an_operator_of_that_name_exists():
    run = finished_run()
    make_user(getpass.getuser(), OPERATOR)

    fork(run)

    assert AuditEntry.objects.get().username == getpass.getuser()
    assert Run.objects.get(forked_from=run).started_by == f"user:{getpass.getuser()}"
