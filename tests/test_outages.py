"""Workers and the sweeper ride out a Redis outage (issue 11, "stay up"): a private Redis is
stopped for real under them and started again; they wait with backoff, say so once, and the
runs started meanwhile run once it is back."""

import signal
import subprocess
import time

import pytest

from runs.models import Run
from runs.moves import start_run
from runs.processes import free_port, wait_for_port
from tests.agents import TEST
from tests.conftest import Workers, wait_for
from tools.demo.models import LedgerCall

pytestmark = pytest.mark.django_db(transaction=True)


class PrivateRedis:
    """A redis-server of this test's own, so stopping it touches nobody else."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


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
