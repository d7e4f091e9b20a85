"""`manage.py chaos`, small: real workers SIGKILLed while chaos runs execute, with and without
the fork."""

import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR, subprocess_env


@pytest.mark.parametrize("mode", ["--no-fork", "--fork"])
def test_chaos_loses_nothing_and_repeats_no_effect(mode):
    result = subprocess.run(
        [sys.executable, "manage.py", "chaos", "--runs", "8", "--workers", "2", "--kill-every", "0.7",
         "--timeout", "120", "--seed", "7", mode],
        cwd=PROJECT_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )

    last = result.stdout.strip().splitlines()[-1]
    figures = re.fullmatch(
        r"chaos: runs=8 succeeded=(\d+) needs_attention=(\d+) lost=(\d+) duplicate_effects=(\d+) kills=(\d+)", last
    )
    assert figures, result.stdout + result.stderr
    succeeded, needs_attention, lost, duplicates, kills = map(int, figures.groups())
    assert (lost, duplicates) == (0, 0), result.stdout
    assert succeeded + needs_attention == 8
    assert kills >= 1
    assert result.returncode == 0


def test_chaos_rollback_undoes_each_write_once_and_loses_no_run():
    result = subprocess.run(
        [sys.executable, "manage.py", "chaos", "--rollback", "--runs", "6", "--workers", "2", "--kill-every", "0.7",
         "--timeout", "150", "--seed", "7"],
        cwd=PROJECT_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )

    last = result.stdout.strip().splitlines()[-1]
    figures = re.fullmatch(
        r"chaos: runs=6 failed=(\d+) needs_attention=(\d+) duplicate_effects=(\d+) kills=(\d+) "
        r"compensated=(\d+) compensation_failed=(\d+) duplicate_compensations=(\d+) lost=(\d+)", last
    )
    assert figures, result.stdout + result.stderr
    failed, needs_attention, duplicate_effects, kills, compensated, compensation_failed, duplicates, lost = map(
        int, figures.groups()
    )
    assert (duplicates, lost, duplicate_effects) == (0, 0, 0), result.stdout
    assert failed == 6 and compensated + compensation_failed == 6, result.stdout
    assert kills >= 1
    assert result.returncode == 0, result.stdout + result.stderr
