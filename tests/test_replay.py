"""The replay check: recorded journals against the current code, writing nothing."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from runs.engine import advance_run
from runs.models import Run
from runs.moves import start_run
from runs.replay import replay
from runs.services import cancel
from tests.agents import CALLS, LENGTH, SHIFT, TEST

pytestmark = pytest.mark.django_db(transaction=True)

TABLES = ["runs_run", "runs_runevent", "runs_journalentry", "runs_auditentry", "tools_approval"]


def finished(agent, input):
    run = start_run(agent, input, started_by=TEST)
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def row_counts():
    with connection.cursor() as cursor:
        counts = {}
        for table in TABLES:
            cursor.execute(f"SELECT count(*) FROM {table}")
            counts[table] = cursor.fetchone()[0]
        return counts


def test_an_unchanged_agent_replays_the_same_and_nothing_is_written_or_called():
    run = finished("t_protocol", {"value": 3})
    assert run.status == "succeeded"
    before, calls = row_counts(), dict(CALLS)

    result = replay(run)

    assert (result.same, result.steps, result.difference) == (True, 7, "")
    assert row_counts() == before
    assert dict(CALLS) == calls


def test_a_changed_agent_is_caught_at_its_first_different_step(monkeypatch):
    monkeypatch.setitem(SHIFT, "second", "sleep")
    run = finished("t_shifty", {})
    assert run.status == "waiting"
    assert replay(run).same  # the same so far: the sleep is yet to end

    monkeypatch.setitem(SHIFT, "second", "tool")  # the code changes under the live run
    before = row_counts()
    result = replay(run)

    assert not result.same and result.steps == 1
    assert result.difference.startswith("nondeterminism at step 2: the journal has sleep (arguments")
    assert "but the code now asks for tool 't_idem'" in result.difference
    assert row_counts() == before
    assert CALLS["t_idem"] == 0


def test_a_finished_run_whose_code_changed_is_caught(monkeypatch):
    monkeypatch.setitem(SHIFT, "second", "tool")
    run = finished("t_shifty", {})
    assert run.status == "succeeded"
    # The code now asks for a sleep at step 2, where the journal has the tool call.
    monkeypatch.setitem(SHIFT, "second", "sleep")

    result = replay(run)

    assert not result.same
    assert "nondeterminism at step 2: the journal has tool 't_idem'" in result.difference


def test_code_that_asks_for_more_or_fewer_steps_than_a_finished_run_is_caught(monkeypatch):
    run = finished("t_lengthy", {})
    assert (run.status, run.output) == ("succeeded", 1)

    monkeypatch.setitem(LENGTH, "reads", 3)
    longer = replay(run)
    monkeypatch.setitem(LENGTH, "reads", 1)
    shorter = replay(run)

    assert (longer.same, longer.difference) == (False, "the code asks for step 3, but the run succeeded after step 2")
    assert (shorter.same, shorter.difference) == (False, "the code returns after step 1, but the journal has 2 steps")


def test_a_cancelled_run_replays_the_same_as_far_as_it_went():
    run = start_run("t_sleeper", {"seconds": 3600, "steps": 2}, started_by=TEST)
    advance_run(run.id)
    call_command("replay", "--run", str(run.id))  # waiting: the same so far
    cancel(run.id, actor=TEST, reason="not needed")

    result = replay(Run.objects.get(id=run.id))

    assert (result.same, result.steps) == (True, 1)


def test_the_command_names_each_run_and_exits_non_zero_on_a_difference(monkeypatch, capsys):
    monkeypatch.setitem(SHIFT, "second", "tool")
    changed = finished("t_shifty", {})
    same = finished("t_protocol", {"value": 1})
    monkeypatch.setitem(SHIFT, "second", "sleep")

    call_command("replay", "--run", str(same.id))
    assert f"same       {same.id} t_protocol (succeeded): 7 step(s) as recorded" in capsys.readouterr().out

    with pytest.raises(CommandError, match="1 run\\(s\\) would not replay with the current code"):
        call_command("replay", "--agent", "t_shifty")
    out = capsys.readouterr().out
    assert f"DIFFERENT  {changed.id} t_shifty (succeeded): nondeterminism at step 2" in out
    assert "replay: runs=1 same=0 different=1" in out


def test_the_command_refuses_what_it_cannot_find():
    with pytest.raises(CommandError, match="not a run id: nope"):
        call_command("replay", "--run", "nope")
    with pytest.raises(CommandError, match="no run to replay of agent 't_protocol'"):
        call_command("replay", "--agent", "t_protocol")
