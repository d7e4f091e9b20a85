"""Redis is a doorbell, Postgres the truth (issue 11, "stay up"): a queued run whose job was
lost starts within a sweep or two of the services being back, however the job was lost, and a
run started while Redis is away is reported as started."""

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from runs.models import Run
from runs.moves import start_run
from runs.processes import free_port
from runs.queue import run_queue, runs_with_waiting_jobs
from runs.sweeper import requeue_lost_jobs
from tests.agents import TEST
from tests.conftest import PROJECT_DIR, Workers, empty_run_queue, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def backdate(run, seconds=10):
    Run.objects.filter(id=run.id).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def jobs_for(run):
    return [job_id for job_id in run_queue().get_job_ids() if str(run.id) in job_id]


def test_a_queued_run_whose_job_is_gone_is_enqueued_again_at_the_next_sweep():
    empty_run_queue()
    run = start_run("t_echo_agent", {"text": "x"}, started_by=TEST)
    assert str(run.id) in runs_with_waiting_jobs()
    empty_run_queue()  # Redis restarted, or a worker took the job and died before its claim
    backdate(run)
    assert requeue_lost_jobs() == 1
    assert len(jobs_for(run)) == 1
    empty_run_queue()


def test_a_queued_run_whose_job_still_waits_is_left_alone():
    empty_run_queue()
    run = start_run("t_echo_agent", {"text": "x"}, started_by=TEST)
    backdate(run)
    assert requeue_lost_jobs() == 0
    assert len(jobs_for(run)) == 1
    empty_run_queue()


def test_a_run_started_while_redis_is_away_is_reported_started_and_runs_once_redis_is_back(tmp_path, operator):
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    env = subprocess_env(REDIS_URL=redis_url)
    started = subprocess.run(
        [sys.executable, "manage.py", "start_run", "t_echo_agent", "--input", '{"text": "hi"}',
         "--user", operator.username],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert "Traceback" not in started.stderr
    run = Run.objects.get(agent="t_echo_agent")
    assert f"run {run.id} queued" in started.stdout
    assert "Redis does not answer" in started.stdout

    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    pool = Workers(tmp_path, RUN_LEASE_SECONDS="2", REDIS_URL=redis_url)
    try:
        pool.start()
        pool.sweeper()
        wait_for(lambda: Run.objects.get(id=run.id).status == "succeeded", timeout=30,
                 what="the run to start once Redis was back")
    finally:
        pool.stop_all()
        redis.terminate()
        redis.wait(timeout=10)
