"""The per-tool circuit breaker (tools/breakers.py), against the real Redis: it opens at the
failure threshold of its sliding window, lets exactly one probe through after the cooldown even
among processes racing for it, closes or reopens on the probe's outcome, is reset by an admin
(audited), and, with its Redis stopped or frozen, answers at once from the journal's counts."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from runs.actors import Actor
from runs.models import AuditEntry, JournalEntry, Run
from runs.processes import PrivateRedis
from tests.conftest import PROJECT_DIR, subprocess_env, wait_for
from tests.test_settings import last_line, load_settings
from tools import breakers
from tools.models import Tool

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def breakers_judge_five_calls(settings):
    """These tests make a handful of calls: a breaker that judges at least five (the default
    judges twenty, docs/breakers.md)."""
    settings.BREAKER_MIN_CALLS = 5

ADA = Actor("user", "ada")


class Clock:
    """A controlled clock for the breakers (seconds since the epoch)."""

    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    # On a whole second, so that the moments compared below are exact.
    controlled = Clock(float(int(time.time())))
    monkeypatch.setattr(breakers, "clock", controlled)
    return controlled


@pytest.fixture
def tool_name():
    """A tool of its own for each test, and its keys gone afterwards."""
    name = f"t_flaky_{uuid.uuid4().hex[:8]}"
    Tool.objects.create(name=name, effect="read")
    yield name
    try:
        breakers._link().client.delete(*breakers._keys(name))
    except redis.RedisError:
        pass  # the test's private Redis, stopped: it goes, with its keys


def fail(name, times=1, probe=False):
    for _ in range(times):
        breakers.record(name, failed=True, probe=probe)


def succeed(name, times=1, probe=False):
    for _ in range(times):
        breakers.record(name, failed=False, probe=probe)


def test_it_opens_once_the_window_holds_the_minimum_of_calls_and_not_before(clock, tool_name):
    fail(tool_name, 4)
    assert breakers.check(tool_name) == breakers.Verdict(allowed=True)

    fail(tool_name)
    verdict = breakers.check(tool_name)

    assert not verdict.allowed and verdict.state == "open" and not verdict.probe
    assert verdict.until == datetime.fromtimestamp(clock.now, tz=UTC) + timedelta(seconds=30)
    assert verdict.reason.startswith(f"breaker of '{tool_name}' open: 5 of 5 calls failed in the last 30 s; half-opens at ")


def test_it_opens_at_the_failure_percent_and_not_below(clock, tool_name):
    succeed(tool_name, 3)
    fail(tool_name, 2)  # 2 of 5: 40 %
    assert breakers.check(tool_name).allowed
    assert breakers.states([tool_name])[tool_name] == breakers.BreakerState("closed", calls=5, failed=2, window_seconds=30)

    fail(tool_name)  # 3 of 6: 50 %

    assert breakers.check(tool_name).state == "open"
    assert "3 of 6 calls failed" in breakers.check(tool_name).reason


@override_settings(BREAKER_MIN_CALLS=2, BREAKER_FAILURE_PERCENT=100)
def test_the_thresholds_come_from_the_settings(clock, tool_name):
    succeed(tool_name)
    fail(tool_name, 3)  # 3 of 4 is not 100 %
    assert breakers.check(tool_name).allowed

    clock.advance(31)
    fail(tool_name, 2)

    assert breakers.check(tool_name).state == "open"


def test_the_window_slides(clock, tool_name):
    fail(tool_name, 4)
    clock.advance(20)
    succeed(tool_name, 3)
    clock.advance(11)  # the four failures are 31 s old now
    fail(tool_name)

    assert breakers.check(tool_name).allowed
    assert breakers.states([tool_name])[tool_name].calls == 4  # three successes, one failure

    fail(tool_name, 3)  # 4 of 7 in the window

    assert breakers.check(tool_name).state == "open"


def test_after_the_cooldown_one_caller_probes_and_the_others_wait(clock, tool_name):
    fail(tool_name, 5)
    opened = breakers.check(tool_name)
    clock.advance(29)
    assert not breakers.check(tool_name).allowed
    assert breakers.states([tool_name])[tool_name].state == "open"

    clock.advance(1)
    probe = breakers.check(tool_name)
    others = [breakers.check(tool_name) for _ in range(3)]

    assert probe == breakers.Verdict(allowed=True, probe=True, state="half_open",
                                     reason=f"breaker of '{tool_name}' half-open: this call is its probe")
    assert opened.until == datetime.fromtimestamp(clock.now, tz=UTC)
    for verdict in others:
        assert not verdict.allowed and not verdict.probe and verdict.state == "half_open"
        assert verdict.until == datetime.fromtimestamp(clock.now, tz=UTC) + timedelta(seconds=5)
        assert "its probe call is under way" in verdict.reason
    assert breakers.states([tool_name])[tool_name].probing


def test_a_successful_probe_closes_the_breaker_with_an_empty_window(clock, tool_name):
    fail(tool_name, 5)
    clock.advance(30)
    assert breakers.check(tool_name).probe

    succeed(tool_name, probe=True)

    assert breakers.check(tool_name) == breakers.Verdict(allowed=True)
    assert breakers.states([tool_name])[tool_name] == breakers.BreakerState("closed", window_seconds=30)
    fail(tool_name, 4)
    assert breakers.check(tool_name).allowed  # the old failures do not count again


def test_a_failed_probe_opens_it_for_another_cooldown(clock, tool_name):
    fail(tool_name, 5)
    clock.advance(30)
    assert breakers.check(tool_name).probe

    clock.advance(2)
    fail(tool_name, probe=True)
    verdict = breakers.check(tool_name)

    assert not verdict.allowed and verdict.state == "open"
    assert verdict.until == datetime.fromtimestamp(clock.now, tz=UTC) + timedelta(seconds=30)
    assert f"breaker of '{tool_name}' open: its probe call failed; half-opens at " in verdict.reason
    clock.advance(30)
    assert breakers.check(tool_name).probe


def test_a_probe_that_never_reports_is_replaced_after_its_lease(clock, tool_name):
    fail(tool_name, 5)
    clock.advance(30)
    assert breakers.check(tool_name).probe  # its worker dies: no record()

    clock.advance(29)
    assert not breakers.check(tool_name).allowed
    clock.advance(1)
    assert breakers.check(tool_name).probe
    assert not breakers.check(tool_name).allowed


def test_calls_that_end_while_it_is_open_do_not_close_it(clock, tool_name):
    fail(tool_name, 5)
    succeed(tool_name, 10)  # calls let through before it opened, ending now
    succeed(tool_name, probe=True)  # a late probe of an earlier half-open spell

    assert breakers.check(tool_name).state == "open"


def test_every_key_expires(clock, tool_name):
    fail(tool_name, 5)
    client = breakers._link().client

    ttls = {key: client.pttl(key) for key in breakers._keys(tool_name)}

    assert all(0 < ttl for ttl in ttls.values()), ttls
    assert ttls[breakers._keys(tool_name)[0]] <= 90_000  # cooldown, probe lease, window


def test_breakers_are_named_after_the_database(tool_name):
    assert breakers._keys(tool_name)[0] == f"breaker:{settings.DATABASES['default']['NAME']}:{tool_name}:state"
    assert settings.DATABASES["default"]["NAME"].startswith("test_")


def test_reset_closes_it_clears_its_window_and_is_audited(clock, tool_name):
    fail(tool_name, 5)
    clock.advance(30)
    assert breakers.check(tool_name).probe

    breakers.reset(tool_name, actor=ADA)

    assert breakers.check(tool_name) == breakers.Verdict(allowed=True)
    assert breakers.states([tool_name])[tool_name].calls == 0
    entry = AuditEntry.objects.get(action="reset_breaker")
    assert (entry.username, entry.target) == ("ada", tool_name)
    assert entry.details == {"state_before": "half_open", "calls": 5, "failed": 5}


def test_reset_of_a_tool_that_does_not_exist_is_refused():
    with pytest.raises(breakers.BreakerError, match="there is no tool named 'nope'"):
        breakers.reset("nope", actor=ADA)
    assert not AuditEntry.objects.exists()


# Two real OS processes against the real Redis: each checks once both are ready, and prints
# its verdict.
RACER = """
import json, os, sys, time
import django
django.setup()
from tools import breakers
folder = sys.argv[1]
open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
for go in ("go-1", "go-2"):
    while not os.path.exists(os.path.join(folder, go)):
        time.sleep(0.01)
    verdict = breakers.check(sys.argv[2])
    print(json.dumps({"allowed": verdict.allowed, "probe": verdict.probe, "state": verdict.state}), flush=True)
"""


def test_processes_share_the_breaker_and_exactly_one_of_them_probes(tool_name, tmp_path, monkeypatch):
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), tool_name], cwd=PROJECT_DIR,
                         env=subprocess_env(), stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == len(racers), what="the processes to start")
        # Opened now, by this process: the others see it open.
        fail(tool_name, 5)
        (tmp_path / "go-1").touch()
        first = [json.loads(racer.stdout.readline()) for racer in racers]
        assert first == [{"allowed": False, "probe": False, "state": "open"}] * len(racers)

        # Opened again as if 100 s ago: its cooldown is over for everybody's clock.
        breakers._link().client.delete(*breakers._keys(tool_name))
        monkeypatch.setattr(breakers, "clock", lambda: time.time() - 100)
        fail(tool_name, 5)
        (tmp_path / "go-2").touch()
        second = [json.loads(racer.stdout.readline()) for racer in racers]
        for racer in racers:
            assert racer.wait(timeout=30) == 0
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()

    assert sorted(second, key=lambda verdict: not verdict["probe"]) == [
        {"allowed": True, "probe": True, "state": "half_open"},
        *[{"allowed": False, "probe": False, "state": "half_open"}] * (len(racers) - 1),
    ]


# Redis unreachable: the journal's counts decide.

@pytest.fixture
def private_redis(settings):
    server = PrivateRedis()
    server.start()
    settings.REDIS_URL = server.url
    yield server
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def journal_outcomes(name, *, failed, succeeded, at=None):
    """Outcome rows of `name` in a run's journal, as the recorder writes them for each attempt:
    a transiently failed attempt's error says "transient": true."""
    run = Run.objects.create(agent="t_protocol", input={}, started_by="test")
    at = at or datetime.now(UTC)
    rows = [("failed", {"type": "TransientError", "message": "503", "transient": True})] * failed
    rows += [("succeeded", None)] * succeeded
    for seq, (status, error) in enumerate(rows, start=1):
        JournalEntry.objects.create(run=run, seq=seq, phase="outcome", kind="tool", name=name, effect="read",
                                    args_hash="x", status=status, error=error, actor="worker:w", created_at=at)


def test_with_redis_stopped_check_answers_at_once_from_the_journal(private_redis, tool_name, caplog):
    succeed(tool_name)  # the breakers' Redis answered once
    private_redis.stop()
    journal_outcomes(tool_name, failed=2, succeeded=2)
    journal_outcomes("t_other_tool", failed=5, succeeded=0)
    # A permanent error (the service answered) is no reason to open.
    run = Run.objects.create(agent="t_protocol", input={}, started_by="test")
    JournalEntry.objects.create(run=run, seq=1, phase="outcome", kind="tool", name=tool_name, effect="read",
                                args_hash="x", status="failed", error={"type": "PermanentError", "message": "400"},
                                actor="worker:w")

    started = time.monotonic()
    verdict = breakers.check(tool_name)

    assert time.monotonic() - started < 1
    assert verdict == breakers.Verdict(allowed=True)  # 2 of 5
    breakers.record(tool_name, failed=True)  # does not raise
    journal_outcomes(tool_name, failed=1, succeeded=0)
    newest = JournalEntry.objects.filter(name=tool_name).latest("created_at").created_at

    verdict = breakers.check(tool_name)  # 3 of 6

    assert not verdict.allowed and verdict.state == "open"
    assert verdict.until == newest + timedelta(seconds=30)
    assert "Redis unreachable, counted from the journal" in verdict.reason
    assert "3 of 6 calls failed in the last 30 s" in verdict.reason
    outage_lines = [r for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(outage_lines) == 1, [r.getMessage() for r in caplog.records]


def test_with_redis_stopped_old_failures_no_longer_hold_calls_back(private_redis, tool_name):
    private_redis.stop()
    journal_outcomes(tool_name, failed=5, succeeded=0, at=datetime.now(UTC) - timedelta(seconds=31))

    assert breakers.check(tool_name).allowed


@override_settings(BREAKER_WINDOW_SECONDS=60)
def test_with_redis_stopped_calls_go_ahead_a_cooldown_after_the_newest_failure(private_redis, tool_name):
    private_redis.stop()
    journal_outcomes(tool_name, failed=5, succeeded=0, at=datetime.now(UTC) - timedelta(seconds=40))

    assert breakers.check(tool_name).allowed  # in the window, but 40 s > the cooldown


def test_with_redis_frozen_check_gives_up_within_a_second(private_redis, tool_name):
    succeed(tool_name)  # a connection to it is open
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    journal_outcomes(tool_name, failed=5, succeeded=0)

    started = time.monotonic()
    verdict = breakers.check(tool_name)

    assert time.monotonic() - started < 1
    assert not verdict.allowed and verdict.state == "open"


def test_the_breakers_come_back_with_redis(private_redis, tool_name):
    private_redis.stop()
    assert breakers.check(tool_name).allowed
    assert breakers.states([tool_name])[tool_name].state == "unknown"
    private_redis.start()

    fail(tool_name, 5)  # tried again after the outage's backoff (half a second, then more)
    wait_for(lambda: breakers.states([tool_name])[tool_name].state == "open" or fail(tool_name),
             what="the breaker to open in Redis again")
    assert breakers.check(tool_name).state == "open"


@pytest.mark.parametrize(("name", "value", "message"), [
    ("BREAKER_FAILURE_PERCENT", "101", "BREAKER_FAILURE_PERCENT=101 must be 100 or less"),
    ("BREAKER_FAILURE_PERCENT", "0", "BREAKER_FAILURE_PERCENT=0 must be at least 1"),
    ("BREAKER_MIN_CALLS", "0", "BREAKER_MIN_CALLS=0 must be at least 1"),
    ("BREAKER_WINDOW_SECONDS", "half", "BREAKER_WINDOW_SECONDS='half' is not a whole number"),
    ("BREAKER_COOLDOWN_SECONDS", "-5", "BREAKER_COOLDOWN_SECONDS=-5 must be at least 1"),
])
def test_a_bad_breaker_setting_is_refused_by_name(name, value, message):
    result = load_settings(**{name: value})

    assert result.returncode != 0
    assert message in last_line(result)


def test_successes_held_back_are_sent_at_the_end_of_a_job(tool_name):
    """A healthy tool's successes go to Redis in batches; what a process still holds when its
    job ends (a forked work horse ends with it) is sent then, so no success is lost."""
    for _ in range(10):
        breakers.record(tool_name, failed=False)
    assert breakers.states([tool_name])[tool_name].calls < 10  # held back

    breakers.flush()
    assert breakers.states([tool_name])[tool_name].calls == 10
    breakers.record(tool_name, failed=True)
    state = breakers.states([tool_name])[tool_name]
    assert (state.state, state.calls, state.failed) == ("closed", 11, 1)
