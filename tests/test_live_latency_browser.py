"""How long from a step's commit to the browser showing it. Prints figures; asserts no timing.

The figures go to docs/benchmarks.md. Rerun with:
    make test PYTEST_ARGS="tests/test_live_latency_browser.py -s"
"""

import statistics

from playwright.sync_api import expect

from runs.actors import Actor
from runs.engine import wait_until_settled
from runs.moves import start_run
from runs.models import JournalEntry
from tests.conftest import PROJECT_DIR, log_in

RECORD_APPEARANCES = """
() => {
  window.__seen = {};
  const note = () => document.querySelectorAll('#steps li[id^="step-"]').forEach(li => {
    if (!(li.id in window.__seen)) window.__seen[li.id] = Date.now();
  });
  new MutationObserver(note).observe(document.body, {childList: true, subtree: true});
  note();
}
"""


def test_commit_to_screen_latency(workers, operator, page, live_server_url):
    log_in(page, live_server_url, "otto")
    workers.start()
    run = start_run("t_sleeper", {"seconds": 0.3, "steps": 15}, started_by=Actor("user", "otto"))
    page.goto(f"{live_server_url}/runs/{run.id}/")
    page.evaluate(RECORD_APPEARANCES)

    expect(page.locator("#run-header .status")).to_have_text("succeeded", timeout=60_000)
    run = wait_until_settled(run.id, timeout=10)
    seen = page.evaluate("window.__seen")
    first_rows = {}
    for entry in JournalEntry.objects.filter(run=run).order_by("seq", "id"):
        first_rows.setdefault(entry.seq, entry.created_at)
    latencies = [
        seen[f"step-{seq}"] - committed.timestamp() * 1000
        for seq, committed in first_rows.items()
        if f"step-{seq}" in seen and seen[f"step-{seq}"] - committed.timestamp() * 1000 > 0
    ]

    assert len(first_rows) == 30
    assert len(latencies) >= 20, "most steps must appear live, after the page opened"
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p95 = ordered[round(0.95 * (len(ordered) - 1))]
    line = f"live_latency: steps={len(latencies)} p50_ms={p50:.0f} p95_ms={p95:.0f} max_ms={ordered[-1]:.0f}"
    print(line)
    (PROJECT_DIR / ".data" / "live-latency.txt").write_text(line + "\n")
