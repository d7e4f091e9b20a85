"""Crash safety with real processes: RQ workers killed with SIGKILL, stopped with SIGSTOP, with
the fork (a work horse per job) and without it (the worker process runs its jobs itself).

Calls are counted in the outside world (LedgerCall, written by the tools in their own
transactions), not in our own tables.
"""

import os
import signal
from pathlib import Path

import pytest

from runs.agents import ROLLBACK_AGENT
from runs.engine import wait_until_settled
from runs.models import JournalEntry, Run, RunEvent
from runs.moves import start_run
from runs.services import roll_back, rollback_plan
from tests.agents import TEST
from tests.conftest import children, kill_worker, wait_for
from tools.demo.models import LedgerCall


def calls(key):
    return LedgerCall.objects.filter(key=key).count()


def start_blocker(tmp_path):
    release = tmp_path / "release"
    run = start_run("w_blocker", {"value": 7, "release": str(release)}, started_by=TEST)
    return run, release


def blocked_in_step_3(run):
    return LedgerCall.objects.filter(key=f"{run.id}:3").exists()


def test_a_worker_killed_while_a_tool_blocks_is_replaced_and_completed_steps_ran_once(workers, tmp_path):
    first = workers.start(fork=True)
    workers.sweeper()
    run, release = start_blocker(tmp_path)
    wait_for(lambda: blocked_in_step_3(run), what="the blocking tool call")

    horses = kill_worker(first)
    assert horses  # the work horse, in the middle of the job (and the scheduler process)
    release.touch()
    workers.start(fork=True)
    run = wait_until_settled(run.id, timeout=60)

    assert run.status == "succeeded", run.status_reason
    assert calls("w_read:7") == 1  # step 1, completed before the kill
    assert calls(f"{run.id}:2") == 1  # step 2, completed before the kill
    assert calls(f"{run.id}:3") == 2  # in doubt: an idempotent write runs again, same key
    assert calls(f"{run.id}:4") == 1
    handed_back = RunEvent.objects.get(run=run, actor="system:sweeper")
    assert handed_back.reason.startswith("the lease of worker") and handed_back.reason.endswith("expired")


def test_a_worker_stopped_past_its_lease_cannot_write_when_it_continues(workers, tmp_path):
    stale = workers.start(scheduler=False, fork=True)  # so that its one child is the work horse
    workers.sweeper()
    run, release = start_blocker(tmp_path)
    wait_for(lambda: blocked_in_step_3(run), what="the blocking tool call")
    os.kill(stale.pid, signal.SIGSTOP)
    (horse,) = children(stale.pid)
    os.kill(horse, signal.SIGSTOP)
    stale_actor = JournalEntry.objects.get(run=run, seq=3, phase="intent").actor
    assert stale_actor.endswith(f":{horse}")

    # The lease (2 s) expires; the sweeper hands the run back; another worker finishes it.
    release.touch()
    workers.start()
    run = wait_until_settled(run.id, timeout=60)
    assert run.status == "succeeded"
    rows_before = list(JournalEntry.objects.filter(run=run).values_list("id", flat=True))
    events_before = RunEvent.objects.filter(run=run).count()

    # The stopped worker continues: its tool call returns, and it tries to record the outcome.
    os.kill(horse, signal.SIGCONT)
    os.kill(stale.pid, signal.SIGCONT)
    wait_for(lambda: not Path(f"/proc/{horse}").exists() or _is_zombie(horse), what="the stale work horse's exit")

    log = (tmp_path / "worker-0.log").read_text()
    assert f"lost the lease on run {run.id}" in log  # it tried to write, and was fenced
    assert list(JournalEntry.objects.filter(run=run).values_list("id", flat=True)) == rows_before
    assert RunEvent.objects.filter(run=run).count() == events_before
    assert not JournalEntry.objects.filter(run=run, actor=stale_actor, phase="outcome", seq=3).exists()
    after = Run.objects.get(id=run.id)
    assert (after.status, after.output, after.updated_at) == (run.status, run.output, run.updated_at)


def _is_zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_sleep_is_a_scheduled_job_and_the_run_goes_on_after_it(workers):
    workers.start(scheduler=True)
    run = start_run("t_sleeper", {"seconds": 1, "steps": 2}, started_by=TEST)

    run = wait_until_settled(run.id, timeout=60)

    assert run.status == "succeeded"
    woken = RunEvent.objects.filter(run=run, to_status="queued", actor="system:scheduler")
    assert woken.count() == 2
    assert list(RunEvent.objects.filter(run=run, kind="transition").values_list("to_status", flat=True)) == [
        "running", "waiting", "queued", "running", "waiting", "queued", "running", "succeeded",
    ]


def test_a_parent_run_waits_for_its_child_on_real_workers(workers):
    workers.start(scheduler=True)
    workers.start(scheduler=False)
    parent = start_run("t_parent", {"value": 4}, started_by=TEST)

    parent = wait_until_settled(parent.id, timeout=60)

    assert parent.status == "succeeded"
    child = Run.objects.get(parent=parent)
    assert parent.output == {"child": str(child.id), "output": 8}
    assert RunEvent.objects.filter(run=parent, actor=f"run:{child.id}", to_status="queued").exists()


def test_a_call_longer_than_the_lease_keeps_its_worker_by_heartbeat(workers, tmp_path):
    workers.start()
    workers.sweeper()
    run = start_run("w_long_call", {"value": 1, "release": str(tmp_path / "unused")}, started_by=TEST)

    run = wait_until_settled(run.id, timeout=60)

    # The call took 5 s, two and a half leases: heartbeats kept the lease, nobody took over.
    assert run.status == "succeeded"
    assert calls(f"{run.id}:1") == 1
    assert not RunEvent.objects.filter(run=run, actor="system:sweeper").exists()
    assert RunEvent.objects.filter(run=run, to_status="running").count() == 1


# Without the fork ------------------------------------------------------------------------------


def backend_calls(run_ids):
    """(worker pid, database backend pid) of each run's w_backend call, in the runs' order."""
    found = {}
    for key, backend in LedgerCall.objects.filter(tool="w_backend").values_list("key", "amount"):
        _, value, pid = key.split(":")
        found[int(value)] = (int(pid.removeprefix("pid=")), backend)
    return [found[value] for value in range(len(run_ids))]


@pytest.mark.parametrize("fork", [False, True], ids=["no-fork", "fork"])
def test_a_no_fork_worker_runs_its_jobs_in_one_process_on_one_connection(workers, fork):
    worker = workers.start(scheduler=False, fork=fork)
    run_ids = [start_run("w_backend_pid", {"value": n}, started_by=TEST).id for n in range(6)]

    for run_id in run_ids:
        assert wait_until_settled(run_id, timeout=60).status == "succeeded"

    calls_made = backend_calls(run_ids)
    processes = {pid for pid, _ in calls_made}
    backends = {backend for _, backend in calls_made}
    if fork:
        # A work horse per job, each with a connection of its own.
        assert worker.pid not in processes and len(processes) == len(backends) == 6
    else:
        assert processes == {worker.pid}
        assert len(backends) == 1  # the second to sixth jobs reused the first one's connection
        assert children(worker.pid) == []  # and nothing was forked


@pytest.mark.parametrize("failed", [0, 1], ids=["open", "failed"])
def test_a_no_fork_worker_closes_a_connection_a_job_left_in_a_transaction(workers, failed):
    worker = workers.start(scheduler=False, fork=False)
    leaver = start_run("w_transaction_leaver", {"value": failed}, started_by=TEST)
    wait_for(lambda: Run.objects.get(id=leaver.id).status != "queued", what="the claim of the run that leaves a transaction")
    after = [start_run("w_backend_pid", {"value": n}, started_by=TEST).id for n in range(2)]

    for run_id in after:
        assert wait_until_settled(run_id, timeout=60).status == "succeeded"
    (first_pid, first_backend), (second_pid, second_backend) = backend_calls(after)
    assert first_pid == second_pid == worker.pid
    assert first_backend == second_backend
    assert worker.poll() is None


def test_a_killed_no_fork_worker_is_the_process_that_ran_the_job_and_another_finishes_the_run(workers, tmp_path):
    first = workers.start(scheduler=False, fork=False)
    workers.sweeper()
    run, release = start_blocker(tmp_path)
    wait_for(lambda: blocked_in_step_3(run), what="the blocking tool call")
    intent = JournalEntry.objects.get(run=run, seq=3, phase="intent")
    assert intent.actor.endswith(f":{first.pid}")  # the worker itself is in the tool call

    assert kill_worker(first) == []  # no work horse: the kill stopped the job
    release.touch()
    second = workers.start(scheduler=False, fork=False)
    run = wait_until_settled(run.id, timeout=60)

    assert run.status == "succeeded", run.status_reason
    assert calls("w_read:7") == 1
    assert calls(f"{run.id}:2") == 1
    assert calls(f"{run.id}:3") == 2  # in doubt: the idempotent write runs again, with the same key
    assert calls(f"{run.id}:4") == 1
    finished_by = JournalEntry.objects.get(run=run, seq=4, phase="outcome").actor
    assert finished_by.endswith(f":{second.pid}")
    assert RunEvent.objects.filter(run=run, actor="system:sweeper").exists()


def test_a_worker_killed_mid_rollback_is_replaced_and_no_compensation_happens_twice(workers, tmp_path):
    first = workers.start()
    workers.sweeper()
    release = tmp_path / "release"
    run = start_run("w_saga", {"value": 0, "release": str(release)}, started_by=TEST)
    run = wait_until_settled(run.id, timeout=60)
    assert run.status == "failed"
    plan = rollback_plan(run)
    assert [(step.seq, step.compensation) for step in plan.steps] == [(3, "w_withdraw"), (2, "w_withdraw"), (1, "w_withdraw")]

    undo = roll_back(run.id, actor=TEST, reason="the deposits were wrong", shown_digest=plan.digest)
    assert undo.agent == ROLLBACK_AGENT
    wait_for(lambda: LedgerCall.objects.filter(key=f"{undo.id}:1").exists(), what="the first compensation")
    kill_worker(first)  # in the middle of the first compensation
    workers.start()
    release.touch()
    wait_for(lambda: Run.objects.get(id=run.id).status == "compensated", timeout=60, what="the rollback's end")

    withdrawals = LedgerCall.objects.filter(tool="w_withdraw").order_by("called_at", "id")
    effects = [(call.key, call.amount) for call in withdrawals if call.executed]
    assert effects == [(f"{undo.id}:1", 3), (f"{undo.id}:2", 2), (f"{undo.id}:3", 1)]  # newest first, once each
    assert withdrawals.filter(key=f"{undo.id}:1").count() == 2  # in doubt after the kill: called again, same key
