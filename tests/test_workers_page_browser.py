"""The workers page in Chromium, against daphne, a real RQ worker (with its scheduler) and the
sweeper: it lists the worker with its heartbeat and the queue depth, follows them without a
reload, and marks a worker killed with SIGKILL as probably dead."""

from playwright.sync_api import expect

from runs.actors import Actor
from runs.moves import start_run
from tests.conftest import kill_worker, log_in

NOT_RELOADED = "window.__notReloaded = true"


def test_it_shows_a_live_worker_and_marks_it_dead_after_a_kill(workers, viewer, page, live_server_url):
    worker = workers.start(scheduler=True)
    workers.sweeper()
    log_in(page, live_server_url, "vera")
    page.get_by_role("link", name="Workers").click()
    page.evaluate(NOT_RELOADED)

    row = page.locator("table.workers tbody tr")
    expect(row).to_have_count(1, timeout=20_000)
    expect(row.locator("td").nth(2)).to_contain_text(str(worker.pid))
    expect(row.locator(".heartbeat time")).to_contain_text("s ago")
    expect(row.locator(".status")).to_have_text("idle")
    expect(page.locator("#scheduler-state .status")).to_have_text("running", timeout=20_000)
    expect(page.locator("#sweeper-state .status")).to_have_text("passing", timeout=20_000)
    expect(page.locator('[data-depth="queued"]')).to_have_text("0")
    # Viewers do not see the link to django-rq's dashboard (staff only).
    expect(page.get_by_role("link", name="RQ's own dashboard (jobs, registries)")).to_have_count(0)

    kill_worker(worker)
    # A run started now waits in the queue: nobody takes it.
    start_run("t_protocol", {"value": 1}, started_by=Actor("user", "vera"))
    expect(page.locator('[data-depth="queued"]')).to_have_text("1", timeout=10_000)
    # An idle worker heartbeats every 5 s and promises the next within WORKER_TTL_SECONDS (20 s):
    # once that has passed (and a grace of 3 s), it is probably dead.
    expect(row.locator(".status")).to_have_text("probably dead", timeout=40_000)
    expect(row.locator(".heartbeat")).to_contain_text("its heartbeat was due at")
    expect(page.locator("#scheduler-state .status")).to_have_text("silent", timeout=20_000)
    assert page.evaluate("window.__notReloaded === true")


def test_staff_see_the_link_to_django_rqs_dashboard(transactional_db, admin_user, page, live_server_url):
    log_in(page, live_server_url, "ada")
    page.goto(f"{live_server_url}/workers/")
    expect(page.get_by_role("heading", name="No workers")).to_be_visible()
    page.get_by_role("link", name="RQ's own dashboard (jobs, registries)").click()
    expect(page).to_have_url(f"{live_server_url}/django-rq/")
