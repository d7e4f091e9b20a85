"""Workers and the sweeper ride out a Redis outage (issue 11, "stay up"): a private Redis is
stopped for real under them and started again; they wait with backoff, say so once, and the
runs started meanwhile run once it is back."""

import signal
import sys
import time

import pytest

from runs.models import Run
from runs.moves import start_run
from runs.processes import PrivateRedis
from tests.agents import TEST
from tests.conftest import Workers, wait_for
from tools.demo.models import LedgerCall

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_workers_and_the_sweeper_ride_out_a_redis_outage_and_run_what_started_meanwhile(private_redis, tmp_path):
    pool = Workers(tmp_path, RUN_LEASE_SECONDS="2", REDIS_URL=private_redis.url)
    try:
        worker = pool.start()
        sweeper = pool.sweeper()
        # Enqueued on the suite's Redis, not the private one: the private one's sweeper finds
        # the run (no job names it there) and enqueues it.
        release = tmp_path / "release"
        busy = start_run("w_blocker", {"value": 7, "release": str(release)}, started_by=TEST)
        wait_for(lambda: LedgerCall.objects.filter(key=f"{busy.id}:3").exists(), what="the blocking tool call")

        private_redis.stop()  # under a job: RQ's bookkeeping at its end meets no Redis
        release.touch()
        wait_for(lambda: Run.objects.get(id=busy.id).status == "succeeded", what="the busy run to finish")
        during = start_run("t_echo_agent", {"text": "during"}, started_by=TEST)
        time.sleep(4)  # several retries of the worker and the sweeper
        assert worker.poll() is None, "the worker quit when Redis went away"
        assert sweeper.poll() is None, "the sweeper quit when Redis went away"
        private_redis.start()

        wait_for(lambda: Run.objects.get(id=during.id).status == "succeeded", timeout=30,
                 what="the run started during the outage")
        assert worker.poll() is None
    finally:
        pool.stop_all()
    worker_log = (tmp_path / "worker-0.log").read_text()
    assert worker_log.count("could not connect to Redis") <= 1, worker_log
    sweeper_log = (tmp_path / "sweeper.log").read_text()
    assert sweeper_log.count("Redis does not answer") == 1, sweeper_log
    assert sweeper_log.count("Redis answers again") == 1, sweeper_log


def test_a_worker_asked_to_stop_while_idle_stops_cleanly(private_redis, tmp_path):
    pool = Workers(tmp_path, REDIS_URL=private_redis.url)
    try:
        worker = pool.start(scheduler=False)
        wait_for(lambda: "Listening" in (tmp_path / "worker-0.log").read_text() or _registered(private_redis),
                 what="the worker to start listening")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, (tmp_path / "worker-0.log").read_text()
    finally:
        pool.stop_all()


def _registered(server):
    import redis

    return bool(redis.Redis.from_url(server.url).keys("rq:worker:*"))


@pytest.fixture
def private_postgres():
    from runs.processes import PrivatePostgres

    server = PrivatePostgres()
    server.create()
    yield server
    server.destroy()


def test_the_sweeper_and_a_worker_ride_out_a_postgres_restart_saying_so_once(private_postgres, tmp_path):
    """A private Postgres cluster is stopped under a sweeper and a worker for a few seconds:
    they stay up, and the sweeper says once that Postgres is away and once that it is back. A
    job the worker takes meanwhile waits for Postgres and then runs (it used to fail at once,
    burned, with a traceback, and its run waited for the sweeper)."""
    import subprocess
    import uuid

    import redis
    import rq

    from runs.processes import POSTGRES_BIN

    subprocess.run([str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(private_postgres.port),
                    "-U", "postgres", "agentops_pg_outage"], check=True)
    url = private_postgres.url("agentops_pg_outage")
    pool = Workers(tmp_path, DATABASE_URL=url)
    try:
        migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], env=pool.env,
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        worker = pool.start()
        sweeper = pool.sweeper()
        sweeper_log = tmp_path / "sweeper.log"
        wait_for(lambda: _registered_workers(pool.env), what="the worker to start")
        time.sleep(1)  # a few passes of the sweeper

        private_postgres.stop()
        queue = rq.Queue("runs.agentops_pg_outage", connection=redis.Redis.from_url(pool.env["REDIS_URL"]))
        queue.empty()
        job = queue.enqueue("runs.engine.advance_run", str(uuid.uuid4()))  # a run it cannot claim
        time.sleep(3)
        assert queue.count == 0  # taken by the worker
        assert job.get_status(refresh=True) != "failed"
        private_postgres.start()
        wait_for(lambda: job.get_status(refresh=True) == "finished", what="the job to run once Postgres is back")

        wait_for(lambda: "Postgres answers again" in sweeper_log.read_text(), what="the sweeper to see Postgres back")
        time.sleep(1)
        assert worker.poll() is None, (tmp_path / "worker-0.log").read_text()
        assert sweeper.poll() is None, sweeper_log.read_text()
    finally:
        pool.stop_all()
    log = sweeper_log.read_text()
    assert log.count("Postgres does not answer") == 1, log
    assert log.count("Postgres answers again") == 1, log
    assert "Traceback" not in log, log
    worker_log = (tmp_path / "worker-0.log").read_text()
    assert worker_log.count("Postgres does not answer") == 1, worker_log
    assert "Traceback" not in worker_log, worker_log


def _registered_workers(env):
    import redis

    return bool(redis.Redis.from_url(env["REDIS_URL"]).keys("rq:worker:*"))


def test_a_sweep_whose_database_goes_away_midway_stops_without_a_traceback_per_part(transactional_db, caplog):
    """Seen under `manage.py faults`: Postgres stopped in the middle of a pass, and each part of
    the pass logged its own traceback. The pass now stops at the first part that finds the
    connection gone, for the sweeper command to wait for the database and say so once. (The
    connection killed here is this test's own backend, on the suite's server.)"""
    import psycopg
    from django.db import connection

    from runs.processes import database_url
    from runs.sweeper import DatabaseAway, sweep

    sweep()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    with psycopg.connect(database_url(), autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [backend])
    try:
        with pytest.raises(DatabaseAway):
            sweep()
    finally:
        connection.close()
    assert "failed; the next pass tries again" not in caplog.text
