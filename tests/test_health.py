"""Fault 14 (issue 10): compose's healthchecks passed whether the worker and the sweeper were
alive or dead. `manage.py health worker|sweeper` checks the heartbeat those processes write."""

import subprocess
import sys
import time

import pytest
from django.db import connection

from runs.queue import redis_connection
from tests.conftest import PROJECT_DIR, kill_worker, subprocess_env, wait_for


def health(*args):
    return subprocess.run([sys.executable, "manage.py", "health", *args], cwd=PROJECT_DIR,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)


@pytest.fixture
def no_heartbeats(transactional_db):
    """Forget the beats that earlier tests' processes left (they expire within a minute)."""
    redis = redis_connection()
    keys = list(redis.scan_iter(f"agentops:alive:{connection.settings_dict['NAME']}:*"))
    if keys:
        redis.delete(*keys)


@pytest.mark.parametrize("kind", ["worker", "sweeper"])
def test_healthy_while_the_process_lives_and_unhealthy_without_it(kind, workers, no_heartbeats):
    dead = health(kind)
    assert dead.returncode == 1
    assert f"unhealthy: no {kind} heartbeat on " in dead.stderr and "(none recorded)" in dead.stderr

    process = workers.start() if kind == "worker" else workers.sweeper()
    alive = wait_for(lambda: (result := health(kind)).returncode == 0 and result, timeout=30,
                     what=f"the {kind} to be healthy")
    assert alive.stdout.startswith(f"healthy: a {kind} on ")

    kill_worker(process)
    time.sleep(3.5)
    gone = health(kind, "--max-age", "3")
    assert gone.returncode == 1, gone.stdout
    assert f"unhealthy: no {kind} heartbeat on " in gone.stderr and "s ago)" in gone.stderr


def test_another_host_s_process_does_not_make_this_one_healthy(workers, no_heartbeats):
    workers.start()
    wait_for(lambda: health("worker").returncode == 0, timeout=30, what="the worker to be healthy")

    assert health("worker", "--host", "another-host").returncode == 1
    assert health("worker", "--anywhere").returncode == 0
