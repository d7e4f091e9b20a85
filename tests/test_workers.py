"""Crash safety with real processes: RQ workers killed with SIGKILL, stopped with SIGSTOP.

Calls are counted in the outside world (LedgerCall, written by the tools in their own
transactions), not in our own tables.
"""

import os
import signal
from pathlib import Path

from runs.engine import wait_until_settled
from runs.moves import start_run
from tests.agents import TEST
from runs.models import JournalEntry, Run, RunEvent
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
    first = workers.start()
    workers.sweeper()
    run, release = start_blocker(tmp_path)
    wait_for(lambda: blocked_in_step_3(run), what="the blocking tool call")

    horses = kill_worker(first)
    assert horses  # the work horse, in the middle of the job (and the scheduler process)
    release.touch()
    workers.start()
    run = wait_until_settled(run.id, timeout=60)

    assert run.status == "succeeded", run.status_reason
    assert calls("w_read:7") == 1  # step 1, completed before the kill
    assert calls(f"{run.id}:2") == 1  # step 2, completed before the kill
    assert calls(f"{run.id}:3") == 2  # in doubt: an idempotent write runs again, same key
    assert calls(f"{run.id}:4") == 1
    handed_back = RunEvent.objects.get(run=run, actor="system:sweeper")
    assert handed_back.reason.startswith("the lease of worker") and handed_back.reason.endswith("expired")


def test_a_worker_stopped_past_its_lease_cannot_write_when_it_continues(workers, tmp_path):
    stale = workers.start(scheduler=False)  # so that its one child is the work horse
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
