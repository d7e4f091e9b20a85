"""The live operator pages in Chromium, against daphne (HTTP and websockets) and real workers."""

import re

from playwright.sync_api import expect

from runs.actors import Actor
from runs.engine import advance_run
from runs.moves import start_run
from tests.agents import TEST
from runs.models import AuditEntry, Run, RunEvent
from tests.conftest import kill_worker, log_in, wait_for
from tools.demo.models import LedgerCall

NOT_RELOADED = "window.__notReloaded = true"


def open_run(page, live_server_url, run):
    page.goto(f"{live_server_url}/runs/{run.id}/")
    page.evaluate(NOT_RELOADED)


def still_the_same_page(page):
    return page.evaluate("window.__notReloaded === true")


def test_steps_stream_in_and_a_second_tab_sees_the_status_change(workers, operator, browser, page, live_server_url):
    log_in(page, live_server_url, "otto")
    listing = browser.new_context().new_page()
    log_in(listing, live_server_url, "otto")
    expect(listing.get_by_role("heading", name="No runs yet")).to_be_visible()
    listing.evaluate(NOT_RELOADED)
    workers.start()
    run = start_run("t_sleeper", {"seconds": 1, "steps": 2}, started_by=Actor("user", "otto"))

    open_run(page, live_server_url, run)
    assert page.locator("#step-4").count() == 0  # not there yet: it arrives over the websocket
    expect(page.locator("#step-4")).to_contain_text("succeeded", timeout=20_000)
    expect(page.locator("#run-header .status")).to_have_text("succeeded")
    expect(page.locator("#step-1")).to_contain_text("t_read")
    expect(page.locator("#step-2")).to_contain_text("sleep")
    assert still_the_same_page(page)

    row = listing.locator(f"#run-{run.id}")
    expect(row.locator(".status")).to_have_text("succeeded", timeout=20_000)
    assert still_the_same_page(listing)
    expect(listing.locator('[data-count="succeeded"]')).to_have_text("1")


def accept_dialogs(page):
    page.on("dialog", lambda dialog: dialog.accept())


def test_pause_resume_and_cancel_are_recorded_with_the_operators_name(workers, operator, page, live_server_url):
    accept_dialogs(page)
    log_in(page, live_server_url, "otto")
    workers.start()
    sleeper = start_run("t_sleeper", {"seconds": 2, "steps": 3}, started_by=Actor("user", "otto"))
    other = start_run("t_sleeper", {"seconds": 60, "steps": 1}, started_by=Actor("user", "otto"))

    open_run(page, live_server_url, sleeper)
    expect(page.locator("#run-header .status")).to_have_text("waiting", timeout=20_000)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#run-header .status")).to_have_text("paused", timeout=10_000)
    events = page.locator("#run-events tbody tr")
    expect(events.filter(has_text="→ paused").filter(has_text="user:otto")).to_have_count(1)
    page.get_by_role("button", name="Resume").click()
    expect(events.filter(has_text="paused → queued").filter(has_text="user:otto")).to_have_count(1)
    expect(page.locator("#run-header .status")).to_have_text("succeeded", timeout=30_000)

    open_run(page, live_server_url, other)
    expect(page.locator("#run-header .status")).to_have_text("waiting", timeout=20_000)
    page.get_by_label("Reason for cancelling").fill("the customer called back")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-header .status")).to_have_text("cancelled", timeout=10_000)
    cancelled = page.locator("#run-events tbody tr").filter(has_text="→ cancelled")
    expect(cancelled.filter(has_text="user:otto").filter(has_text="the customer called back")).to_have_count(1)

    events = RunEvent.objects.filter(actor="user:otto").values_list("run_id", "to_status")
    assert (sleeper.id, "paused") in events and (sleeper.id, "queued") in events
    assert (other.id, "cancelled") in events
    assert set(AuditEntry.objects.values_list("username", "action")) == {("otto", "pause"), ("otto", "resume"), ("otto", "cancel")}


def test_a_step_in_doubt_after_a_kill_is_resolved_from_the_page(workers, operator, page, live_server_url, tmp_path):
    accept_dialogs(page)
    log_in(page, live_server_url, "otto")
    first = workers.start()
    workers.sweeper()
    release = tmp_path / "release"
    run = start_run("w_plain_blocker", {"value": 3, "release": str(release)}, started_by=Actor("user", "otto"))
    wait_for(lambda: LedgerCall.objects.filter(key=f"{run.id}:2").exists(), what="the blocking write")

    open_run(page, live_server_url, run)
    expect(page.locator("#step-2 .step-status")).to_have_text("running")
    kill_worker(first)
    workers.start()
    expect(page.get_by_role("heading", name="Step 2 needs your decision")).to_be_visible(timeout=20_000)
    # No new journal row, but its shown status follows the run's: pushed, not reloaded.
    expect(page.locator("#step-2 .step-status")).to_have_text("in doubt")
    assert still_the_same_page(page)
    expect(page.locator("#run-in-doubt")).to_contain_text('"release"')  # the arguments are in view
    page.get_by_label("It happened; its result (JSON)").fill('{"sent": true, "checked": "mail log"}')
    page.get_by_role("button", name="It happened").click()

    expect(page.locator("#run-header .status")).to_have_text("succeeded", timeout=20_000)
    expect(page.locator("#step-2")).to_contain_text("decided by user:otto")
    assert LedgerCall.objects.filter(key=f"{run.id}:2").count() == 1  # not sent twice
    assert AuditEntry.objects.get(action="resolve_happened").username == "otto"


def test_a_viewer_sees_no_buttons_and_a_forged_post_is_refused(transactional_db, viewer, page, live_server_url):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    advance_run(run.id)

    log_in(page, live_server_url, "vera")
    page.goto(f"{live_server_url}/runs/{run.id}/")

    expect(page.locator("#run-header .status")).to_have_text("waiting")
    # Only "Log out" acts; the waterfall's Zoom is a GET form that changes nothing.
    expect(page.locator('form[method="post"] button')).to_have_count(1)
    expect(page.locator('form:not([method="post"]) button')).to_have_text(["Zoom"])
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    # The form the viewer was not given, posted from the page with a valid CSRF token.
    status = page.evaluate(
        """async url => {
            const token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
            const body = new URLSearchParams({csrfmiddlewaretoken: token, reason: "forged"});
            return (await fetch(url, {method: "POST", body})).status;
        }""",
        f"{live_server_url}/runs/{run.id}/cancel/",
    )
    assert status == 403
    assert Run.objects.get(id=run.id).status == "waiting"


def test_agent_output_is_shown_as_text_never_run(transactional_db, operator, page, live_server_url):
    attack = '<img src=x onerror="window.__attacked = 1"><script>window.__attacked = 2</script>'
    run = start_run("t_echo_agent", {"text": attack}, started_by=TEST)

    log_in(page, live_server_url, "otto")
    page.goto(f"{live_server_url}/runs/{run.id}/")
    expect(page.locator("#run-header .status")).to_have_text("queued")
    advance_run(run.id)  # the step and the output arrive over the websocket
    expect(page.locator("#run-header .status")).to_have_text("succeeded")
    page.locator("#step-1 summary").click()

    expect(page.locator("#step-1")).to_contain_text('<img src=x onerror=')
    expect(page.locator("#run-header")).to_contain_text("<script>")
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__attacked") is None


def test_an_anonymous_websocket_is_closed(transactional_db, page, live_server_url):
    page.goto(f"{live_server_url}/login/")
    outcome = page.evaluate(
        """url => new Promise(resolve => {
            const socket = new WebSocket(url);
            socket.onmessage = () => resolve("message");
            socket.onclose = () => resolve("closed");
        })""",
        live_server_url.replace("http", "ws") + "/ws/runs/",
    )
    assert outcome == "closed"
