"""Serve the dashboard with its workers, in the foreground, until Ctrl-C.

Starts the ASGI server (daphne), two RQ workers (one of which also runs RQ's scheduler for jobs
that wait: sleeps, backoffs; with or without a forked work horse per job as WORKER_FORK says,
without by default) and the sweeper, which hands back the runs of dead workers. Ctrl-C, or
SIGTERM, stops everything this command started; if any of them dies on its own, the others are
stopped too and the command fails.

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
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from watchfiles import PythonFilter, watch

from runs.models import FINISHED, Run
from runs.processes import stop_requested
from tools.sync import sync_tools

STOP_GRACE_SECONDS = 10
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

        processes = self.start_all(commands)
        self.stdout.write(self.style.SUCCESS(f"agentops is at http://{host}:{port}/"))
        self.stdout.write("Press Ctrl-C to stop the web server and the workers.")
        changed = CodeWatcher(watched_paths(), stopping).start() if reload else None
        if reload:
            self.stdout.write("Reloading when Python code changes (--no-reload to turn it off).")
        failed = None
        while failed is None and not stopping.wait(0.2):
            if changed is not None and changed.is_set():
                changed.clear()
                self.restart(processes, commands)
                continue
            for name, process in processes.items():
                if process.poll() is not None:
                    failed = name
            if failed and reload:
                # Under reload, a child that dies is most often code saved half-written: wait
                # for the next change rather than ending `make up`.
                self.stdout.write(self.style.ERROR(
                    f"{failed} exited with status {processes[failed].returncode}: stopped everything; "
                    "waiting for a code change to start again (Ctrl-C to quit)"
                ))
                self.stop_all(processes)
                while not (changed.is_set() or stopping.is_set()):
                    stopping.wait(0.2)
                failed = None
        self.stop_all(processes)
        if failed:
            raise CommandError(f"{failed} exited with status {processes[failed].returncode}")
        self.stdout.write("Stopped.")

    def start_all(self, commands):
        # Each child gets its own session, so Ctrl-C reaches only us and we stop them in order.
        return {name: subprocess.Popen(command, start_new_session=True) for name, command in commands.items()}

    def restart(self, processes, commands):
        close_old_connections()
        live = sorted(set(Run.objects.exclude(status__in=FINISHED).values_list("agent", flat=True)))
        self.stdout.write("Python code changed: restarting the web server, the workers and the sweeper.")
        if live:
            checks = "; ".join(f"manage.py replay --agent {agent}" for agent in live)
            self.stdout.write(self.style.WARNING(
                f"Runs still live will go on with the new code. Check that their recorded steps "
                f"still replay: {checks}"
            ))
        self.stop_all(processes)
        processes.clear()
        processes.update(self.start_all(commands))

    def stop_all(self, processes):
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What a child started and left behind dies with it: each child leads a process group
        # of its own. (A worker stopped while RQ was forking its scheduler leaves the new
        # scheduler running, holding our output open: seen on a loaded machine.)
        for process in processes.values():
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


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
