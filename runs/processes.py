"""Helpers for the commands and tests that start and kill real worker processes."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import connection


def database_url():
    """The URL of the database this process uses, for the processes it starts."""
    from urllib.parse import quote

    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    return (
        f"postgres://{quote(db['USER'] or '')}{password}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


def project_env(**extra):
    """The environment for a project process that must use this process's database.

    Its settings are all here (or in this process's environment): it reads no .env file, so a
    developer's .env in the checkout cannot change a process the tests or the chaos run start.
    """
    env = dict(os.environ)
    env.update(
        DOTENV_FILE="",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="1" if settings.DEBUG else "0",
        DEMO="1" if settings.DEMO else "0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_manage(args, env, log):
    """Start `manage.py ARGS` in its own session (so a signal to it reaches only it)."""
    return subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "manage.py"), *args],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


# Debian's Chromium, for the browser tests and the screenshots.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process=None, seconds=30):
    """Until something answers on the port; fails if `process` exits first or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port} within {seconds}s")


def stop_requested():
    """A flag set by the first SIGINT (Ctrl-C) or SIGTERM, for commands that stop cleanly."""
    flag = threading.Event()

    def stop(signum, frame):
        flag.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return flag


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def signal_quietly(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_worker(process):
    """SIGKILL an RQ worker and the processes it forked (its work horse, its scheduler).

    The worker is frozen first, so that it cannot fork a new horse between the look at its
    children and the kill. Returns the children it killed.
    """
    signal_quietly(process.pid, signal.SIGSTOP)
    forked = children(process.pid)
    for pid in forked:
        signal_quietly(pid, signal.SIGKILL)
    signal_quietly(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    return forked


def scratch_database_name(kind):
    """The scratch database of `kind` for the configured database: agentops_KIND for the
    default `agentops`, DBNAME_KIND for any other, so that two checkouts with databases of
    their own never drop each other's scratch databases (nor share their run queues)."""
    return f"{connection.settings_dict['NAME']}_{kind}"


def use_scratch_database(kind, keep=False):
    """Point this process at a migrated scratch database (scratch_database_name): new (dropped
    first if it exists), or with keep=True, the one left by an earlier call. Returns its name.

    The chaos and benchmark commands work there, never in the dashboard's database; and two
    checkouts configured with different databases never drop each other's scratch database.
    """
    name = scratch_database_name(kind)
    if not keep:
        with connection._nodb_cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    connection.settings_dict["TEST"]["NAME"] = name
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=keep)
    return name


class PrivateRedis:
    """A redis-server of one's own, on a free port, so stopping it touches nobody else."""

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


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A Postgres cluster of one's own (initdb, pg_ctl) in a temporary folder, on a free port, so
    restarting it touches nobody else. Runs as the postgres user when this process is root."""

    def __init__(self):
        import tempfile

        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="agentops-postgres-"))
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            import shutil

            shutil.chown(self.folder, self.user)

    def url(self, name):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *args):
        subprocess.run(args, check=True, user=self.user, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def create(self):
        self._run(str(POSTGRES_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self.start()

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "postgres.log"), "-w", "start")

    def stop(self, mode="fast"):
        self._run(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self):
        import shutil

        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.folder, ignore_errors=True)
