"""Serve the dashboard with its workers, in the foreground, until Ctrl-C.

Starts the ASGI server (daphne), two RQ workers (one of which also runs RQ's scheduler for jobs
that wait: sleeps, backoffs; with or without a forked work horse per job as WORKER_FORK says,
without by default) and the sweeper, which hands back the runs of dead workers. Ctrl-C, or SIGTERM, stops everything this command started;
if any of them dies on its own, the others are stopped too and the command fails.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runs.processes import stop_requested
from tools.sync import sync_tools

STOP_GRACE_SECONDS = 10


class Command(BaseCommand):
    help = "Run the web server and the RQ workers in the foreground until Ctrl-C."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=2)

    def handle(self, *args, host, port, workers, **options):
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

        # Each child gets its own session, so Ctrl-C reaches only us and we stop them in order.
        processes = {
            name: subprocess.Popen(command, start_new_session=True)
            for name, command in commands.items()
        }
        self.stdout.write(self.style.SUCCESS(f"agentops is at http://{host}:{port}/"))
        self.stdout.write("Press Ctrl-C to stop the web server and the workers.")
        failed = None
        while failed is None and not stopping.wait(0.2):
            for name, process in processes.items():
                if process.poll() is not None:
                    failed = name
        self.stop_all(processes)
        if failed:
            raise CommandError(f"{failed} exited with status {processes[failed].returncode}")
        self.stdout.write("Stopped.")

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
