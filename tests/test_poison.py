"""Poison runs (issue 11, "never loop"): a value the journal cannot store, an agent that raises
what is not an Exception, and a run whose workers keep dying at the same place. Each ends once,
clearly, instead of being claimed again at every lease with its tools called each time."""

import signal
import time
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from runs.engine import advance_run, wait_until_settled
from runs.models import JournalEntry, Run
from runs.moves import start_run
from runs.sweeper import sweep
from tests.agents import CRASH, TEST, Crash
from tests.conftest import wait_for
from tools.demo.models import LedgerCall

pytestmark = pytest.mark.django_db(transaction=True)


def poison(where):
    return start_run("p_poison", {"where": where}, started_by=TEST)


def advance(run):
    advance_run(run.id)
    run.refresh_from_db()
    return run


def crash(run):
    with pytest.raises(Crash):
        advance_run(run.id)
    run.refresh_from_db()
    return run


def expire_lease_and_sweep(run):
    Run.objects.filter(id=run.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    sweep()
    run.refresh_from_db()
    return run


def calls(tool):
    return LedgerCall.objects.filter(tool=tool).count()


def test_a_nul_in_a_read_result_fails_that_step_once_and_the_run_with_it():
    run = advance(poison("read"))
    assert run.status == "failed"
    assert run.error["type"] == "unstorable"
    assert "p_read" in run.error["message"] and "$.text" in run.error["message"]
    step = JournalEntry.objects.get(run=run, seq=1)
    assert step.status == "failed" and step.error["type"] == "unstorable"
    assert calls("p_read") == 1


def test_an_idempotent_write_with_a_nul_in_its_result_is_recorded_failed_and_never_called_again():
    run = advance(poison("write"))
    assert run.status == "failed"
    write = JournalEntry.objects.get(run=run, seq=2, phase="outcome")
    assert write.status == "failed" and "$.receipt" in write.error["message"]
    assert calls("p_write") == 1


def test_a_nul_in_the_agents_output_fails_the_run_naming_where():
    run = advance(poison("output"))
    assert run.status == "failed"
    assert run.error["type"] == "unstorable"
    assert "output" in run.error["message"] and "$.text" in run.error["message"]


def test_a_nul_in_an_error_message_is_kept_visible_as_an_escape():
    run = advance(poison("error"))
    assert run.status == "failed"
    assert run.error == {"type": "ValueError", "message": "bad byte \\u0000 in the reply"}
    assert JournalEntry.objects.get(run=run, seq=1).error["message"] == "bad byte \\u0000 in the reply"


@pytest.mark.parametrize("where, raised", [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")])
def test_an_agent_that_raises_systemexit_or_keyboardinterrupt_fails_its_run(where, raised):
    run = advance(poison(where))
    assert run.status == "failed"
    assert run.error["type"] == raised
    assert calls("p_read") == 1


def test_a_no_fork_worker_stopped_cold_in_a_tool_leaves_its_run_to_the_next_worker(workers, tmp_path):
    """RQ's cold shutdown (a second SIGTERM) raises SystemExit inside the job: that is the worker
    stopping, not the agent failing, so the run is not failed but handed on."""
    first = workers.start(scheduler=False, fork=False)
    workers.sweeper()
    release = tmp_path / "release"
    run = start_run("w_blocker", {"value": 7, "release": str(release)}, started_by=TEST)
    wait_for(lambda: LedgerCall.objects.filter(key=f"{run.id}:3").exists(), what="the blocking tool call")
    first.send_signal(signal.SIGTERM)  # warm: waits for the job
    time.sleep(1.5)  # RQ ignores a second signal within a second of the first
    first.send_signal(signal.SIGTERM)  # cold: SystemExit in the tool call
    first.wait(timeout=20)
    assert Run.objects.get(id=run.id).status == "running"
    release.touch()
    workers.start(scheduler=False, fork=False)
    assert wait_until_settled(run.id, timeout=60).status == "succeeded"


def test_a_no_fork_worker_survives_an_agent_that_raises_systemexit(workers):
    worker = workers.start(fork=False)
    first = poison("exit")
    wait_for(lambda: Run.objects.get(id=first.id).status == "failed", what="the exiting run to fail")
    second = poison("clean")
    wait_for(lambda: Run.objects.get(id=second.id).status == "succeeded", what="the next run to succeed")
    assert worker.poll() is None, "the worker exited with the agent"


def test_a_run_whose_worker_dies_at_the_same_step_again_and_again_needs_attention(workers):
    workers.sweeper()
    run = poison("kill")
    deadline = time.monotonic() + 90
    while Run.objects.get(id=run.id).status not in ("needs_attention", "failed", "succeeded"):
        assert time.monotonic() < deadline, f"the run is still {Run.objects.get(id=run.id).status}"
        if all(process.poll() is not None for process in workers.processes[1:]):
            workers.start()  # the last one died in the tool: another takes the run
        time.sleep(0.2)
    run.refresh_from_db()
    assert run.status == "needs_attention"
    # The sweeper's default limit, 3. (A read records nothing before its call: the reason can
    # name the step, not the tool.)
    assert "3 times" in run.status_reason and "step 1" in run.status_reason
    assert calls("p_read") == 3


@override_settings(RUN_LOST_LEASES_LIMIT=2)
def test_lost_leases_count_only_in_a_row_without_a_finished_step():
    CRASH["t_read"] = "before"
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)
    run = crash(run)  # dies in step 1, nothing finished
    assert expire_lease_and_sweep(run).status == "queued"
    del CRASH["t_read"]
    CRASH["t_idem"] = "before"
    run = crash(run)  # step 1 finished this time: progress, the count starts again
    assert expire_lease_and_sweep(run).status == "queued"
    run = crash(run)  # dies in step 2 again: only another intent, no finished step
    run = expire_lease_and_sweep(run)
    assert run.status == "needs_attention"
    assert "2 times" in run.status_reason and "step 2" in run.status_reason and "t_idem" in run.status_reason
    assert run.lost_leases == 0  # a person's resume gives it a fresh count
