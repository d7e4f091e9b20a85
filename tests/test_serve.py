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


def start_serve(port, log_path, *args):
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), *args],
        cwd=PROJECT_DIR, env=subprocess_env(), stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )


def stop_serve(process, started):
    """Ctrl-C; and if serve did not stop, what it started is killed (each child in its own
    session: gone with serve only if serve stops it)."""
    import os

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in started:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def test_a_killed_worker_is_replaced_what_it_left_behind_is_stopped_and_runs_go_on(transactional_db, operator, tmp_path):
    """Issue 11, "stay up": a worker SIGKILLed under serve used to take everything down. Serve
    starts it again; the scheduler it forked and left behind (seen on a loaded machine, holding
    serve's output open) is stopped with it; a run started afterwards completes on the new one."""
    import json
    import os
    import time

    from tests.conftest import wait_for

    # The scheduler starts only where it can take the queue's lock: one killed by an earlier
    # test keeps it for a while.
    empty_run_queue()
    port = free_port()
    log_path = tmp_path / "serve.log"
    process = start_serve(port, log_path, "--workers", "1")
    started = []
    try:
        wait_for_port(port, process)
        started = children_of(process.pid)
        worker = next(pid for pid in started
                      if b"--with-scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes())
        deadline = time.monotonic() + 30
        while not children_of(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        scheduler = children_of(worker)[0]

        os.kill(worker, signal.SIGKILL)

        wait_for(lambda: len(set(children_of(process.pid)) - set(started)) == 1, what="serve to start a new worker")
        wait_for(lambda: not is_running(scheduler), what="the scheduler left behind to be stopped")
        assert "worker-1 was killed by SIGKILL: starting it again in 0.5 s" in log_path.read_text()
        assert process.poll() is None
        started = children_of(process.pid)

        result = subprocess.run(
            [sys.executable, "manage.py", "start_run", "t_echo_agent", "--user", "otto",
             "--input", '{"text": "after the kill"}', "--wait", "--timeout", "60"],
            cwd=PROJECT_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "after the kill" in json.dumps(json.loads(result.stdout.splitlines()[-1]))
    finally:
        stop_serve(process, started)
        empty_run_queue()
    assert process.returncode == 0, log_path.read_text()
    assert [pid for pid in started if is_running(pid)] == []


def test_a_child_that_keeps_crashing_ends_serve_naming_it_and_why(transactional_db, tmp_path):
    """The web server, SIGKILLed, is started again; with its port taken meanwhile it crashes at
    every start: after a few restarts with backoff serve gives up, names it, its exit status and
    its last output, and stops the rest."""
    import os
    import socket

    from tests.conftest import wait_for

    port = free_port()
    log_path = tmp_path / "serve.log"
    process = start_serve(port, log_path)
    started = []
    try:
        wait_for_port(port, process)
        started = children_of(process.pid)
        web = next(pid for pid in started if b"daphne" in Path(f"/proc/{pid}/cmdline").read_bytes())
        os.kill(web, signal.SIGKILL)
        wait_for(lambda: not is_running(web) or web not in children_of(process.pid), what="daphne to die")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            wait_for(lambda: process.poll() is not None, timeout=80, what="serve to give up on the web server")
    finally:
        stop_serve(process, started)
    log = log_path.read_text()
    assert process.returncode == 1, log
    assert "web was killed by SIGKILL: starting it again in 0.5 s" in log
    assert "web keeps crashing: it exited with status 1 after 5 restarts within 60 s" in log
    assert "Address already in use" in log.split("keeps crashing")[1]
    assert [pid for pid in started if is_running(pid)] == []


# Fault 6, second half (issue 10): changing an agent's code needed a restart that nothing
# mentioned. Under `make up` (DEBUG) serve restarts what it started when Python code changes,
# and names the replay check when runs are live; with DEBUG off it never reloads.

PROBE = '''
from pydantic import BaseModel

from runs.agents import agent


class ProbeInput(BaseModel):
    wait: bool = False


@agent("reload_probe")
def reload_probe(ctx, input: ProbeInput) -> dict:
    if input.wait:
        ctx.sleep(3600)
    return {"version": VERSION}
'''


def write_probe(folder, version):
    (folder / "reload_probe_agents.py").write_text(PROBE.replace("VERSION", str(version)))


def serve_with_probe(tmp_path, debug):
    from tests.conftest import project_env

    write_probe(tmp_path, 1)
    env = project_env(DEBUG=debug, AGENT_MODULES="reload_probe_agents", PYTHONPATH=str(tmp_path))
    port = free_port()
    log_path = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "1"],
        cwd=PROJECT_DIR, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process)
    return process, env, log_path


def stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def run_probe(env, *args):
    result = subprocess.run(
        [sys.executable, "manage.py", "start_run", "reload_probe", "--user", "otto", *args],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    return result


def test_in_debug_a_code_change_restarts_the_workers_and_names_the_replay_check(transactional_db, operator, tmp_path):
    import json

    from tests.conftest import empty_run_queue, wait_for

    empty_run_queue()
    process, env, log_path = serve_with_probe(tmp_path, debug="1")
    try:
        first = run_probe(env, "--wait", "--timeout", "60")
        assert first.returncode == 0, first.stdout + first.stderr
        assert json.loads(first.stdout.splitlines()[-1]) == {"version": 1}
        assert run_probe(env, "--input", '{"wait": true}').returncode == 0  # a run left live, sleeping
        workers_before = set(children_of(process.pid))

        write_probe(tmp_path, 2)

        wait_for(lambda: "manage.py replay --agent reload_probe" in log_path.read_text(), timeout=30,
                 what="serve to restart and name the replay check")
        log = log_path.read_text()
        assert "Python code changed: restarting the web server, the workers and the sweeper." in log
        second = run_probe(env, "--wait", "--timeout", "60")
        assert second.returncode == 0, second.stdout + second.stderr
        assert json.loads(second.stdout.splitlines()[-1]) == {"version": 2}
        assert not workers_before & set(children_of(process.pid))

        # Code saved half-written: the restarted processes die; serve waits for the next change.
        (tmp_path / "reload_probe_agents.py").write_text("def broken(:\n")
        wait_for(lambda: "waiting for a code change to start again" in log_path.read_text(), timeout=60,
                 what="serve to wait for a fix")
        assert process.poll() is None
        write_probe(tmp_path, 3)
        third = run_probe(env, "--wait", "--timeout", "60")
        assert third.returncode == 0, third.stdout + third.stderr
        assert json.loads(third.stdout.splitlines()[-1]) == {"version": 3}
    finally:
        stop(process)
        empty_run_queue()
    assert process.returncode == 0, log_path.read_text()


def test_with_debug_off_it_never_reloads(transactional_db, tmp_path):
    import time

    process, env, log_path = serve_with_probe(tmp_path, debug="0")
    try:
        started = set(children_of(process.pid))
        write_probe(tmp_path, 2)
        time.sleep(3)
        assert set(children_of(process.pid)) == started
    finally:
        stop(process)
    assert "Python code changed" not in log_path.read_text()
    assert "Reloading" not in log_path.read_text()
