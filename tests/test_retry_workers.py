"""Retries with real worker processes: a backoff frees its worker; two workers share one breaker;
Redis stopping under them does not wedge the runs."""

import time
from datetime import datetime, timedelta

import pytest

from runs.actors import Actor
from runs.models import JournalEntry, Run
from runs.moves import start_run
from runs.processes import PrivateRedis
from runs.services import retry_step
from tests.agents import TEST
from tests.conftest import Workers, wait_for
from tools.demo.models import LedgerCall

pytestmark = pytest.mark.django_db(transaction=True)
OPERATOR = Actor("user", "olga")


def switch_on(name):
    LedgerCall.objects.create(key=f"{name}:up", tool="switch", executed=True)


def calls(name):
    return list(LedgerCall.objects.filter(tool=name).order_by("called_at", "id"))


def test_a_run_waiting_on_its_backoff_frees_the_worker_for_another(workers):
    workers.start()
    waiting = start_run("r_calls", {"tool": "r_remote_slow"}, started_by=TEST)
    wait_for(lambda: Run.objects.get(id=waiting.id).wait_kind == "retry", what="the first attempt to fail")

    other = start_run("r_calls", {"tool": "t_read", "value": 4}, started_by=TEST)
    wait_for(lambda: Run.objects.get(id=other.id).status == "succeeded", what="the other run, on the one worker")
    run = Run.objects.get(id=waiting.id)
    assert (run.status, run.wait_ref) == ("waiting", "1")
    [row] = JournalEntry.objects.filter(run=run, phase="outcome")
    assert row.status == "retry" and row.error["delay_s"] > 1
    # The run wakes when its journal row says the next attempt is due.
    assert run.wake_at == datetime.fromisoformat(row.error["next_at"])

    switch_on("r_remote_slow")
    retry_step(run.id, 1, actor=OPERATOR, reason="it is back")
    wait_for(lambda: Run.objects.get(id=waiting.id).status == "succeeded", what="the retried run")
    assert len(calls("r_remote_slow")) == 2


@pytest.mark.parametrize("fork", [False, True])
def test_a_worker_stops_a_call_at_its_timeout_and_tries_again(workers, fork):
    workers.start(fork=fork)
    run = start_run("r_calls", {"tool": "r_hang", "value": 3}, started_by=TEST)
    wait_for(lambda: Run.objects.get(id=run.id).status == "succeeded", timeout=45,
             what="the run, its hung call stopped after a second")
    first, second = JournalEntry.objects.filter(run=run, phase="outcome").order_by("attempt")
    assert (first.status, first.error["type"], second.status) == ("retry", "timeout", "succeeded")


def test_two_workers_share_one_breaker_and_one_probe_half_opens_it(transactional_db, tmp_path):
    from tests.conftest import empty_run_queue
    from tools import breakers

    cooldown = 5
    empty_run_queue()
    pool = Workers(tmp_path, RUN_LEASE_SECONDS="5", BREAKER_MIN_CALLS="3", BREAKER_WINDOW_SECONDS="60",
                   BREAKER_COOLDOWN_SECONDS=str(cooldown), BREAKER_FAILURE_PERCENT="50")
    try:
        pool.start()
        pool.start()
        runs = [start_run("r_calls", {"tool": "r_remote", "value": n}, started_by=TEST) for n in range(6)]
        half_opens = wait_for(lambda: breakers.states(["r_remote"])["r_remote"].until, timeout=60,
                          what="the breaker to open")
        # Two probes, each after a cooldown, both failing: the tool is still down.
        wait_for(lambda: len([c for c in calls("r_remote") if c.called_at >= half_opens]) >= 2, timeout=60,
                 what="two probes")
        # (Calls start by the workers' clock, as the breaker's times do.)
        grace = timedelta(seconds=0.5)
        during = [c for c in calls("r_remote") if half_opens - timedelta(seconds=cooldown) + grace < c.called_at < half_opens]
        # At most the other worker's call, let through just before the opening (on a busy
        # machine it may start a while after); nothing else while the breaker is open.
        assert len(during) <= 1, "a worker called the tool while its breaker was open"
        first, second = [c for c in calls("r_remote") if c.called_at >= half_opens][:2]
        assert second.called_at >= first.called_at + timedelta(seconds=cooldown) - grace, \
            "a second probe came before the first one's failure had run its cooldown"

        switch_on("r_remote")
        wait_for(lambda: Run.objects.filter(id__in=[r.id for r in runs], status="succeeded").count() == 6,
                 timeout=90, what="every run to succeed once the tool is back")
        assert breakers.states(["r_remote"])["r_remote"].state == "closed"
    finally:
        pool.stop_all()
        empty_run_queue()


def test_redis_stopping_under_the_breaker_does_not_wedge_the_runs(transactional_db, tmp_path):
    """The breaker fails open to the journal's counts: a run whose worker meets no Redis at its
    next tool call makes the call and finishes, Redis still down."""
    server = PrivateRedis()
    server.start()
    pool = Workers(tmp_path, RUN_LEASE_SECONDS="3", REDIS_URL=server.url)
    try:
        pool.start()
        pool.sweeper()
        release = tmp_path / "release"
        # Enqueued on the suite's Redis: the private one's sweeper finds it and enqueues it there.
        run = start_run("w_blocker", {"value": 7, "release": str(release)}, started_by=TEST)
        wait_for(lambda: LedgerCall.objects.filter(key=f"{run.id}:3").exists(), timeout=60,
                 what="the blocking tool call")
        server.stop()
        release.touch()  # the next step is a tool call: its breaker check meets no Redis
        wait_for(lambda: Run.objects.get(id=run.id).status == "succeeded", timeout=60,
                 what="the run to finish with Redis down")
        assert LedgerCall.objects.filter(key=f"{run.id}:4", tool="w_write").exists()
    finally:
        pool.stop_all()
        if server.process.poll() is None:
            server.stop()
    log = (tmp_path / "worker-0.log").read_text()
    assert "breaker" in log.lower(), log
