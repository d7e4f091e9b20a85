"""Serve the dashboard with its workers, in the foreground, until Ctrl-C.

Starts the ASGI server (daphne), two RQ workers (one of which also runs RQ's scheduler for jobs
that wait: sleeps, backoffs; with or without a forked work horse per job as WORKER_FORK says,
without by default) and the sweeper, which hands back the runs of dead workers. Ctrl-C, or
SIGTERM, stops everything this command started.

A child that exits on its own (killed, out of memory, a bug) is started again, after a delay
that doubles from RESTART_FIRST_DELAY_SECONDS up to RESTART_MAX_DELAY_SECONDS and starts over
once the child has stayed up RESTART_STABLE_SECONDS. A crash loop (a child that would be
restarted more than CRASH_LOOP_RESTARTS times within CRASH_LOOP_SECONDS) ends the command: it
names the child, its exit status and the last lines of its output, stops everything and exits 1.
The children's output goes through this command, to its own.

With --reload (the default in DEBUG, so under `make up`; never by default with DEBUG off) it
watches the project's Python packages and the agent modules (AGENT_MODULES, wherever they are
on the path) with watchfiles, and restarts everything it started when a .py file changes, so the
workers run the new code. Runs still live then go on with the new code: the command names the
replay check (`manage.py replay --agent NAME`, docs/development.md) for each of their agents.
"""

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from watchfiles import PythonFilter, watch

from runs.models import FINISHED, Run
from runs.processes import stop_requested
from tools.sync import sync_tools

STOP_GRACE_SECONDS = 10
RESTART_FIRST_DELAY_SECONDS = 0.5
RESTART_MAX_DELAY_SECONDS = 30.0
RESTART_STABLE_SECONDS = 30.0  # up this long, a child's next restart waits the first delay again
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_SECONDS = 60.0
TAIL_LINES = 15  # of a child's output, quoted when it crash-loops
# The project's own packages; the checkout's other folders (.venv, .data) are not code it runs.
PROJECT_PACKAGES = ("agentops", "runs", "tools")


class Command(BaseCommand):
    help = "Run the web server and the RQ workers in the foreground until Ctrl-C."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument(
            "--reload", action=argparse.BooleanOptionalAction, default=None,
            help="restart the workers and the web server when Python code changes "
                 f"(default: on in DEBUG, off otherwise; now {'on' if settings.DEBUG else 'off'})",
        )

    def handle(self, *args, host, port, workers, reload, **options):
        reload = settings.DEBUG if reload is None else reload
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                raise CommandError(
                    f"port {port} on {host} is in use: stop what holds it, or pass --port"
                ) from None

        # The tools' rows follow the code from the moment the project starts.

        sync_tools()
        python = sys.executable
        manage = [python, str(settings.BASE_DIR / "manage.py")]
        commands = {
            "web": [python, "-m", "daphne", "-b", host, "-p", str(port), "agentops.asgi:application"],
            "sweeper": [*manage, "sweeper"],
        }
        for number in range(1, workers + 1):
            worker = [*manage, "worker"]
            if number == 1:
                worker.append("--with-scheduler")
            commands[f"worker-{number}"] = worker

        stopping = stop_requested()

        children = {name: Child(name, command, self.stdout) for name, command in commands.items()}
        for child in children.values():
            child.start()
        self.stdout.write(self.style.SUCCESS(f"agentops is at http://{host}:{port}/"))
        self.stdout.write("Press Ctrl-C to stop the web server and the workers.")
        changed = CodeWatcher(watched_paths(), stopping).start() if reload else None
        if reload:
            self.stdout.write("Reloading when Python code changes (--no-reload to turn it off).")
        crash_loop = None
        while crash_loop is None and not stopping.wait(0.2):
            if changed is not None and changed.is_set():
                changed.clear()
                self.restart(children)
                continue
            for child in children.values():
                crash_loop = self.look_after(child)
                if crash_loop:
                    break
            if crash_loop and reload:
                # Under reload, a child that keeps dying is most often code saved half-written:
                # wait for the next change rather than ending `make up`.
                self.stdout.write(self.style.ERROR(
                    f"{crash_loop}; stopped everything; waiting for a code change to start again (Ctrl-C to quit)"
                ))
                self.stop_all(children)
                while not (changed.is_set() or stopping.is_set()):
                    stopping.wait(0.2)
                crash_loop = None
        self.stop_all(children)
        if crash_loop:
            raise CommandError(f"{crash_loop}; stopped everything")
        self.stdout.write("Stopped.")

    def look_after(self, child):
        """Start a child whose restart is due; note one that exited and plan its restart.
        Returns what to say when the child is in a crash loop, else None."""
        if child.process is None:
            if time.monotonic() >= child.restart_at:
                child.start()
            return None
        status = child.process.poll()
        if status is None:
            return None
        child.reap()
        now = time.monotonic()
        if now - child.started_at >= RESTART_STABLE_SECONDS:
            child.delay = RESTART_FIRST_DELAY_SECONDS
        while child.restarts and now - child.restarts[0] > CRASH_LOOP_SECONDS:
            child.restarts.popleft()
        how = describe_exit(status)
        if len(child.restarts) >= CRASH_LOOP_RESTARTS:
            tail = "".join(f"\n  | {line}" for line in child.tail) or " (none)"
            return (f"{child.name} keeps crashing: it {how} after {len(child.restarts)} restarts "
                    f"within {CRASH_LOOP_SECONDS:g} s; its last output:{tail}")
        self.stdout.write(self.style.ERROR(f"{child.name} {how}: starting it again in {child.delay:g} s"))
        child.restarts.append(now)
        child.restart_at = now + child.delay
        child.delay = min(child.delay * 2, RESTART_MAX_DELAY_SECONDS)
        return None

    def restart(self, children):
        close_old_connections()
        live = sorted(set(Run.objects.exclude(status__in=FINISHED).values_list("agent", flat=True)))
        self.stdout.write("Python code changed: restarting the web server, the workers and the sweeper.")
        if live:
            checks = "; ".join(f"manage.py replay --agent {agent}" for agent in live)
            self.stdout.write(self.style.WARNING(
                f"Runs still live will go on with the new code. Check that their recorded steps "
                f"still replay: {checks}"
            ))
        self.stop_all(children)
        for child in children.values():
            child.forget_crashes()
            child.start()

    def stop_all(self, children):
        running = [child.process for child in children.values() if child.process is not None]
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in children.values():
            if child.process is not None:
                child.reap()


class Child:
    """A process serve started, and restarts: its command, its output's last lines, its crashes."""

    def __init__(self, name, command, out):
        self.name = name
        self.command = command
        self.out = out
        self.process = None
        self.reader = None
        self.tail = deque(maxlen=TAIL_LINES)
        self.started_at = 0.0
        self.restart_at = 0.0
        self.restarts = deque()  # when it was restarted after a crash, within CRASH_LOOP_SECONDS
        self.delay = RESTART_FIRST_DELAY_SECONDS

    def start(self):
        # Its own session, so Ctrl-C reaches only us and we stop the children in order.
        self.process = subprocess.Popen(
            self.command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started_at = time.monotonic()
        self.tail.clear()
        self.reader = threading.Thread(target=self.relay, args=(self.process.stdout,), daemon=True,
                                       name=f"{self.name}-output")
        self.reader.start()

    def relay(self, stream):
        """Pass the child's output on to ours, keeping its last lines."""
        for raw in stream:
            line = raw.decode(errors="replace")
            self.tail.append(line.rstrip("\n"))
            self.out.write(line, ending="")
            self.out.flush()
        stream.close()

    def reap(self):
        """After the child exited: stop what it started and left behind, and read the rest of
        its output. Each child leads a process group of its own. (A worker stopped while RQ was
        forking its scheduler leaves the new scheduler running, holding the child's output
        open: seen on a loaded machine.)"""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.reader.join(timeout=5)
        self.process = None

    def forget_crashes(self):
        self.restarts.clear()
        self.delay = RESTART_FIRST_DELAY_SECONDS


def describe_exit(status):
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def watched_paths():
    """The project's packages, and each agent module outside them: its package's folder, or the
    file itself for a module that is a lone file (beside manage.py, say: watching its folder
    would watch the whole checkout, .venv included)."""
    paths = {settings.BASE_DIR / package for package in PROJECT_PACKAGES}
    for module in settings.AGENT_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            continue
        origin = Path(spec.origin).resolve()
        path = origin if "." not in module and spec.submodule_search_locations is None else origin.parent
        if not any(path.is_relative_to(known) for known in paths):
            paths.add(path)
    return sorted(paths)


class CodeWatcher(threading.Thread):
    """Sets `changed` when a .py file under the paths changes (watchfiles: inotify on Linux)."""

    def __init__(self, paths, stopping):
        super().__init__(daemon=True, name="code-watcher")
        self.paths = paths
        self.stopping = stopping
        self.changed = threading.Event()

    def start(self):
        super().start()
        return self.changed

    def run(self):
        for _ in watch(*self.paths, watch_filter=PythonFilter(), stop_event=self.stopping):
            self.changed.set()
