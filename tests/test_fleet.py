"""runs.fleet against real RQ workers: the run a busy worker holds, and a busy worker killed in
the middle of its run, which does not heartbeat in Redis (no fork) but whose lease lapses."""

import subprocess
import sys

from playwright.sync_api import expect

from runs import fleet
from runs.models import Run, RunStatus
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import PROJECT_DIR, free_port, kill_worker, log_in, subprocess_env, wait_for, wait_for_port


def test_a_busy_worker_holds_its_run_and_is_dead_once_the_lease_lapses(workers, tmp_path, client, viewer):
    worker = workers.start(scheduler=False, fork=False)
    run = start_run("w_blocker", {"value": 7, "release": str(tmp_path / "never")}, started_by=TEST)
    wait_for(lambda: Run.objects.filter(id=run.id, status=RunStatus.RUNNING).exists(), what="the claim")

    [busy] = wait_for(lambda: [view for view in fleet.workers() if view.run is not None], what="a busy worker")
    assert busy.pid == worker.pid and busy.state == "busy"
    assert busy.run.id == run.id and busy.run.lease_owner == f"{busy.hostname}:{worker.pid}"
    assert not busy.probably_dead
    client.force_login(viewer)
    page = client.get("/workers/").content.decode()
    assert f'<a href="/runs/{run.id}/"><code>{str(run.id)[:8]}</code></a> w_blocker' in page
    assert f"{busy.run.lease_owner}, epoch 1, expires" in page

    kill_worker(worker)
    # The test workers' lease is 2 s; no sweeper runs, so the run stays running with its lease.
    [dead] = wait_for(lambda: [view for view in fleet.workers() if view.probably_dead], timeout=15,
                      what="the killed worker marked dead")
    assert dead.lease_lapsed and not dead.heartbeat_overdue
    assert dead.why_dead.startswith("the lease on the run it holds expired at")
    page = client.get("/workers/", HTTP_HX_REQUEST="true").content.decode()
    assert "probably dead" in page and "the lease on the run it holds expired at" in page


def test_the_queue_depth_counts_the_jobs_nobody_took(workers):
    start_run("t_protocol", {"value": 1}, started_by=TEST)
    start_run("t_protocol", {"value": 2}, started_by=TEST)

    depth = fleet.queue_depth()

    assert (depth.queued, depth.scheduled, depth.failed) == (2, 0, 0)
    assert fleet.workers() == [] and fleet.scheduler() is None


def test_a_killed_worker_whose_run_went_to_another_worker_does_not_hold_it(workers, tmp_path, client, viewer):
    first = workers.start(scheduler=False, fork=False)
    run = start_run("w_blocker", {"value": 7, "release": str(tmp_path / "never")}, started_by=TEST)
    wait_for(lambda: Run.objects.filter(id=run.id, status=RunStatus.RUNNING).exists(), what="the claim")
    kill_worker(first)
    workers.sweeper()
    second = workers.start(scheduler=False, fork=False)
    # The sweeper hands the run back when the lease (2 s) expires; the second worker claims it.
    wait_for(lambda: Run.objects.filter(id=run.id, status=RunStatus.RUNNING, lease_epoch=2).exists(),
             what="the second claim")

    views = {view.pid: view for view in fleet.workers()}

    assert views[second.pid].holds_run and not views[second.pid].probably_dead
    assert not views[first.pid].holds_run and views[first.pid].lost_run and views[first.pid].probably_dead
    assert views[first.pid].why_dead == f"its run went to {views[second.pid].hostname}:{second.pid} after its lease expired"
    client.force_login(viewer)
    page = client.get("/workers/").content.decode()
    assert page.count(f"{views[second.pid].hostname}:{second.pid}, epoch 2, expires") == 1


def test_the_workers_page_says_so_when_redis_does_not_answer(transactional_db, page, viewer, tmp_path):
    # The production server, configured with a Redis where nothing listens.
    port = free_port()
    env = subprocess_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    with open(tmp_path / "daphne.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "agentops.asgi:application"],
            cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, server)
            log_in(page, f"http://127.0.0.1:{port}", viewer.username)
            response = page.goto(f"http://127.0.0.1:{port}/workers/")
            assert response.status == 200
            expect(page.locator("main")).to_contain_text("Redis does not answer")
        finally:
            # SIGKILL: a daphne whose channel layer cannot reach Redis may be slow to stop, and
            # how it stops is not what this test is about.
            server.kill()
            server.wait(timeout=10)
