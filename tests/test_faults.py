"""`manage.py faults` (issue 11, proof): the stack under serve, against private Redis and
Postgres, through a Redis outage, a Postgres restart, a worker, the sweeper and the web server
SIGKILLed, and a poison run; no run lost, no effect twice, no loop. Small numbers here; the
figures at full size are in docs/benchmarks.md."""

import re
import subprocess
import sys

from tests.conftest import PROJECT_DIR, subprocess_env

LAST_LINE = re.compile(
    r"faults: runs=(\d+) lost=(\d+) duplicate_effects=(\d+) settled_after_outage_s=([\d.]+) "
    r"stack_restarts=(\d+) poison_loops=(\d+)"
)


def test_the_stack_rides_out_each_fault_and_loses_no_run():
    result = subprocess.run(
        [sys.executable, "manage.py", "faults", "--runs", "4", "--redis-outage", "3", "--postgres-down", "2",
         "--lease", "2"],
        cwd=PROJECT_DIR, env=subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    last = result.stdout.strip().splitlines()[-1]
    match = LAST_LINE.fullmatch(last)
    assert match, output
    runs, lost, duplicates, settled, restarts, loops = match.groups()
    assert (int(runs), int(lost), int(duplicates), int(loops)) == (21, 0, 0, 0), output
    assert float(settled) < 30, output
    # The worker, the sweeper and the web server killed, and the worker the poison run killed
    # at each of its RUN_LOST_LEASES_LIMIT (3) leases: each started again by serve.
    assert int(restarts) == 6, output
