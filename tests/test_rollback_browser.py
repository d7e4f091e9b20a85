"""Rollback in Chromium: the plan first, the irreversible acknowledged, the world put back."""

from playwright.sync_api import expect

from runs.actors import Actor
from runs.models import Run
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import log_in, wait_for
from tools.approvals import decide
from tools.demo.models import Refund
from tools.models import Approval


def test_an_operator_rolls_back_a_failed_demo_run_and_sees_the_refund_reversed(
        workers, operator, admin_user, page, live_server_url):
    page.on("dialog", lambda dialog: dialog.accept())
    workers.start()
    workers.sweeper()
    # Order A-1003: refunded, emailed (once approved), then the helpdesk refuses to close it.
    run = start_run("refund_customer", {"order_id": "A-1003", "think_seconds": 0}, started_by=TEST)
    approval = wait_for(lambda: Approval.objects.filter(run=run, status="pending").first(), what="the email's request")
    decide(approval.id, "approve", actor=Actor.for_user(admin_user), shown_hash=approval.form_hash)
    wait_for(lambda: Run.objects.get(id=run.id).status == "failed", what="the failure at close_ticket")
    refund = Refund.objects.get(order_id="A-1003")

    log_in(page, live_server_url, "otto")
    page.goto(f"{live_server_url}/runs/{run.id}/")
    expect(page.locator("#step-4")).to_contain_text("irreversible: cannot be undone")
    page.get_by_role("link", name="Roll back…").click()

    plan = page.locator("table.plan")
    expect(plan).to_contain_text("undone by reverse_refund")
    expect(plan).to_contain_text("Irreversible: cannot be undone")
    page.get_by_label("I understand that step 4 (send_email) stays done").check()
    page.get_by_label("Reason for rolling back").fill("the customer kept the lamp")
    page.get_by_role("button", name="Roll back 1 step(s)").click()

    expect(page.locator("#run-header .title .status")).to_have_text("compensated", timeout=30_000)
    expect(page.locator("#run-header")).to_contain_text("Rolled back by")
    page.get_by_role("link", name="Demo world").click()
    expect(page.locator(f"#refund-{refund.id}")).to_contain_text("reversed")
    refund.refresh_from_db()
    assert refund.reversed_at is not None

    # Then a fork from step 1 with a corrected result (the order that was meant) runs to the end.
    page.goto(f"{live_server_url}/runs/{run.id}/")
    step = page.locator("#step-1")
    step.locator("summary").click()
    corrected = '{"id": "A-1001", "email": "ann@example.com", "total_cents": 4200, "item": "kettle"}'
    step.get_by_label("Step 1's result, edited").fill(corrected)
    step.get_by_label("Reason for forking").fill("the customer meant order A-1001")
    step.get_by_role("button", name="Fork from here").click()
    expect(page.locator("#run-header")).to_contain_text("Forked from")
    fork = Run.objects.get(forked_from=run)
    email = wait_for(lambda: Approval.objects.filter(run=fork, status="pending").first(), what="the fork's email request")
    decide(email.id, "approve", actor=Actor.for_user(admin_user), shown_hash=email.form_hash)
    expect(page.locator("#run-header .title .status")).to_have_text("succeeded", timeout=30_000)
    assert Refund.objects.filter(order_id="A-1001", reversed_at__isnull=True).count() == 1
