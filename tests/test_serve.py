"""`manage.py serve`, the last step of `make up`: it serves, and Ctrl-C stops all it started."""

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import PROJECT_DIR, empty_run_queue, free_port, subprocess_env, wait_for_port


def children_of(pid):
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def is_running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def serve_once(port):
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=PROJECT_DIR, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/") as response:
            assert response.status == 200
            assert b"Log in to agentops" in response.read()
        started = children_of(process.pid)
        assert len(started) == 4  # daphne, two workers, the sweeper

        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output, started


def test_it_serves_and_ctrl_c_stops_everything_it_started_twice_in_a_row(transactional_db):
    port = free_port()
    for _ in range(2):
        status, output, started = serve_once(port)

        assert status == 0, output
        assert f"agentops is at http://127.0.0.1:{port}/" in output
        assert "Stopped." in output
        assert [pid for pid in started if is_running(pid)] == []


def test_it_refuses_a_port_in_use(transactional_db):
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as squatter:
        try:
            wait_for_port(port, squatter)
            result = subprocess.run(
                [sys.executable, "manage.py", "serve", "--port", str(port)],
                cwd=PROJECT_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=30,
            )
        finally:
            squatter.terminate()

    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_what_a_child_left_behind_is_stopped_with_it(transactional_db):
    """Seen on a loaded machine: a worker that stopped while RQ forked its scheduler left the
    scheduler running, holding serve's output open, so serve's caller never saw it end. Here the
    worker dies abruptly (SIGKILL) and leaves its scheduler behind: serve, which stops on a dead
    child, must stop that too."""
    import os
    import time

    # The scheduler starts only where it can take the queue's lock: one killed by an earlier
    # test keeps it for a while.
    empty_run_queue()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=PROJECT_DIR, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    started = []
    try:
        wait_for_port(port, process)
        worker = next(pid for pid in children_of(process.pid)
                      if b"--with-scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes())
        deadline = time.monotonic() + 30
        while not children_of(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        scheduler = children_of(worker)[0]

        started = children_of(process.pid)
        os.kill(worker, signal.SIGKILL)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            for pid in started:  # each in its own session: gone with serve only if it stops them
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    assert process.returncode == 1, output
    assert "exited with status" in output
    assert not is_running(scheduler)
