"""Retry now in Chromium: a run parked because a step ran out of attempts shows the attempts, and
the operator's click sends it on, through a real worker."""

from playwright.sync_api import expect

from runs.engine import advance_run
from runs.models import AuditEntry, Run
from runs.moves import start_run
from tests.agents import FAILS, TEST
from tests.conftest import log_in


def test_an_operator_sees_the_attempts_of_a_parked_step_and_retries_it_now(
        workers, operator, page, live_server_url, jitter):
    questions = []
    page.on("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    # Parked here, in this process: r_read fails at each of its 4 attempts (backoffs of a few ms).
    jitter["value"] = 0.001
    FAILS["r_read"] = 10
    run = start_run("r_calls", {"tool": "r_read"}, started_by=TEST)
    advance_run(run.id)
    assert Run.objects.get(id=run.id).parked_by == "retries"
    # The worker is another process, where r_read no longer fails: the service is back.
    workers.start()

    log_in(page, live_server_url, "otto")
    page.goto(f"{live_server_url}/runs/{run.id}/")
    card = page.locator("#run-retry")
    expect(card).to_contain_text("Step 1 ran out of attempts")
    expect(card.locator(".attempt")).to_have_count(4)
    expect(card.locator(".attempt").first).to_contain_text("TransientError: r_read is having a bad moment")
    expect(card.locator(".attempt").last).to_contain_text("out of attempts")
    expect(page.locator("#step-1 .step-status")).to_have_text("out of attempts")
    expect(page.locator("#run-header")).to_contain_text("parked: out of retries")

    card.get_by_placeholder("why it should work now (optional)").fill("the vendor is back")
    card.get_by_role("button", name="Retry now").click()

    expect(page.locator("#run-header .title .status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#step-1 .step-status")).to_have_text("succeeded")
    expect(page.locator("#step-1")).to_contain_text("5 attempts")
    expect(page.locator("#run-retry")).to_be_empty()
    assert questions and questions[0].startswith("Give step 1 a fresh round of attempts, starting now?")
    entry = AuditEntry.objects.get(action="retry_step")
    assert (entry.username, entry.reason) == ("otto", "the vendor is back")
