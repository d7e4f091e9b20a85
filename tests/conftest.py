"""Shared fixtures: the three personas, real subprocesses against the test database, a browser.

Everything here is real: the test database is Postgres, servers and workers are separate
processes started from the project's own commands, the browser is Debian's Chromium.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.utils import timezone

from runs import retries
from runs.processes import (  # noqa: F401  (some are imported by the tests from here)
    CHROMIUM, CHROMIUM_FLAGS, children, free_port, kill_worker, project_env, signal_quietly,
    start_manage, wait_for_port,
)
from runs.roles import ADMIN, OPERATOR, VIEWER

# The suite's worker tests count calls in the demo's ledger and run its chaos agent.
if not apps.is_installed("tools.demo"):
    raise pytest.UsageError("the test suite needs the demo: run it with DEMO=1, as `make test` does")

import tests.agents  # noqa: E402, F401  (registers the test agents and tools)

PROJECT_DIR = Path(__file__).resolve().parent.parent
PASSWORD = "a-long-test-password"

# Playwright's sync API keeps an event loop in the test's thread; Django would then refuse the
# test's own (synchronous) database calls as if they came from async code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def make_user(username, role=None, **fields):
    user = User.objects.create_user(username=username, password=PASSWORD, **fields)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def viewer(db):
    return make_user("vera", VIEWER)


@pytest.fixture
def operator(db):
    return make_user("otto", OPERATOR)


@pytest.fixture
def admin_user(db):
    return make_user("ada", ADMIN, is_staff=True)


@pytest.fixture
def outsider(db):
    """Signed in, but holds no role."""
    return make_user("oscar")


def subprocess_env(**extra):
    """The environment for a project process that must use the test database (DEBUG off, the
    demo on as in this process: project_env carries DEMO)."""
    agent_modules = ",".join([*settings.AGENT_MODULES, "tests.agents"])
    return project_env(DEBUG="0", AGENT_MODULES=agent_modules, **extra)


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker):
    """Daphne, the production ASGI server, serving the project against the test database.

    Tests that use it must use `transactional_db`, so that what they write is committed and
    the server's own connection sees it.
    """
    with django_db_blocker.unblock():
        env = subprocess_env()
    port = free_port()
    (PROJECT_DIR / ".data").mkdir(exist_ok=True)
    log = open(PROJECT_DIR / ".data" / "test-daphne.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
         "agentops.asgi:application"],
        cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def log_in(page, live_server_url, username, password=PASSWORD):
    page.goto(f"{live_server_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture(autouse=True)
def fresh_test_agents():
    tests.agents.reset()
    forget_breakers()


def forget_breakers():
    """Close every tool's circuit breaker of the test database: what one test's failures opened
    must not hold the next test's calls. (Its keys: tools.breakers._keys.)"""
    from django.db import connection

    from runs.queue import redis_connection
    from tools import breakers

    keys = list(redis_connection().scan_iter(f"breaker:{connection.settings_dict['NAME']}:*"))
    if keys:
        redis_connection().delete(*keys)
    for link in breakers._links.values():
        link.forget()


@pytest.fixture
def jitter(monkeypatch):
    """The backoff's random share (runs/retries.py), fixed (by default at 0.75 of the ceiling)."""
    share = {"value": 0.75}
    monkeypatch.setattr(retries, "_share", lambda text: share["value"])
    return share


@pytest.fixture
def clock(monkeypatch):
    """A clock that moves only when the test says so (django.utils.timezone.now, which the
    recorder and the waits read)."""
    class Clock:
        now = timezone.now()

        def advance(self, seconds):
            self.now += timedelta(seconds=seconds)

    controlled = Clock()
    monkeypatch.setattr(timezone, "now", lambda: controlled.now)
    return controlled


def empty_run_queue():
    """Forget every job of the test database's run queue, left by earlier tests.

    The queue and its registries are the keys named after it (rq:queue:NAME,
    rq:scheduled:NAME, ..., and the scheduler's lock, which a killed worker keeps for a minute).
    """
    from runs.queue import run_queue

    queue = run_queue()
    keys = list(queue.connection.scan_iter(f"rq:*:{queue.name}"))
    if keys:
        queue.connection.delete(*keys)


class Workers:
    """Real RQ worker processes (`manage.py worker`) against the test database."""

    def __init__(self, log_dir, **env):
        self.env = subprocess_env(**env)
        self.log_dir = log_dir
        self.processes = []

    def start(self, scheduler=True, fork=None):
        """fork: True or False to choose; None for the default (the WORKER_FORK setting)."""
        log = open(self.log_dir / f"worker-{len(self.processes)}.log", "w")
        args = ["worker", "--with-scheduler"] if scheduler else ["worker"]
        if fork is not None:
            args.append("--fork" if fork else "--no-fork")
        process = start_manage(args, self.env, log)
        self.processes.append(process)
        return process

    def sweeper(self):
        log = open(self.log_dir / "sweeper.log", "w")
        process = start_manage(["sweeper", "--interval", "0.5"], self.env, log)
        self.processes.append(process)
        return process

    def stop_all(self):
        """Kill each process and everything it started: its session's process group, so a
        scheduler or work horse left behind by a worker that died first goes too (it would keep
        the queue's scheduler lock, and later tests would start without a scheduler)."""
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)


@pytest.fixture
def workers(transactional_db, tmp_path):
    """Start worker processes with `workers.start()`; all are killed at the end of the test."""
    empty_run_queue()
    pool = Workers(tmp_path, RUN_LEASE_SECONDS="2")
    yield pool
    pool.stop_all()
    empty_run_queue()


def messages_of(response):
    """The messages a view added, as text (the Django messages framework)."""
    from django.contrib.messages import get_messages

    return [str(message) for message in get_messages(response.wsgi_request)]


def wait_for(condition, timeout=30, what="the condition"):
    """Poll until condition() is true; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")
