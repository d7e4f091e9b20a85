"""`manage.py storm`, small: runs that need a failing tool, on two real workers, under our retry
policy and under the naive one, counted at the tool's far side and in the journal."""

import re
import subprocess
import sys

from tests.conftest import PROJECT_DIR, subprocess_env

LAST_LINE = re.compile(
    r"storm: tool_calls=(\d+) naive_tool_calls=(\d+) amplification=(\d+\.\d\d) naive_amplification=(\d+\.\d\d) "
    r"retry_tokens=(\d+) naive_retry_tokens=(\d+) parked=(\d+)"
)
SUCCESSES = re.compile(
    r"storm: duplicate_successes=(\d+) naive_duplicate_successes=(\d+) succeeded=(\d+) naive_succeeded=(\d+) runs=(\d+)"
)


def storm(*args, **env):
    result = subprocess.run(
        [sys.executable, "manage.py", "storm", *args], cwd=PROJECT_DIR, env=subprocess_env(**env),
        capture_output=True, text=True, timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) >= 2, result.stdout + result.stderr
    return lines, LAST_LINE.fullmatch(lines[-1]), SUCCESSES.fullmatch(lines[-2])


def test_a_tool_that_is_down_is_called_a_few_times_while_the_naive_policy_hammers_it():
    # Six runs make few calls: a breaker that judges five of them (not the default twenty).
    lines, last, successes = storm("--runs", "6", "--failure-rate", "1.0", "--seconds", "8", BREAKER_MIN_CALLS="5")

    assert last and successes, "\n".join(lines)
    calls, naive_calls, amplification, _, retry_tokens, naive_retry_tokens, parked = last.groups()
    # The breaker opens at the fifth failed call (BREAKER_MIN_CALLS, every one failed) and stays
    # open for its 30 s cooldown, longer than the window: at most one more call, already on its
    # way from the other worker, gets through. The other runs wait for the breaker.
    assert int(calls) <= 6 and float(amplification) <= 1.2, "\n".join(lines)
    assert re.search(r"breaker: open, ([56]) of \1 calls failed", "\n".join(lines)), "\n".join(lines)
    assert int(parked) == 0
    # Our runs asked the model once each, whatever the tool did; the naive ones asked it again
    # after each failed call.
    assert int(retry_tokens) == 0 and int(naive_retry_tokens) > 0
    assert int(naive_calls) > int(calls)
    assert successes.groups() == ("0", "0", "0", "0", "6")


def test_at_a_failure_rate_of_0_3_every_run_succeeds_and_no_key_succeeds_twice():
    # The default breaker judges at least 20 calls, which six runs at 0.3 hardly ever make: this
    # test is about the retries and the far side's keys (tests/test_breakers.py tests the breaker).
    lines, last, successes = storm("--runs", "6", "--failure-rate", "0.3", "--seconds", "60")

    assert last and successes, "\n".join(lines)
    duplicates, naive_duplicates, succeeded, naive_succeeded, runs = map(int, successes.groups())
    assert (duplicates, naive_duplicates) == (0, 0)
    assert succeeded == runs == 6 and naive_succeeded == 6
    calls, naive_calls, _, _, retry_tokens, _, parked = map(float, last.groups())
    # Each run's call succeeds at last, some after retries.
    assert calls >= 6 and naive_calls >= 6
    assert retry_tokens == 0 and parked == 0
