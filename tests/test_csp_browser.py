"""The Content-Security-Policy in Chromium (issue 11, item 12): every page, the Django admin's
included, loads with no violation of the policy; a confirmation still asks before a form is
sent; and live updates still arrive over the websocket."""

from django.urls import reverse
from playwright.sync_api import expect

from runs.engine import advance_run
from runs.models import Run
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import log_in
from tools.models import Approval, FreezeState

# Every violation of the policy, as the page sees it (before any of the page's own scripts run).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sourceFile}:${event.lineNumber}`);
});
"""


def watch(page):
    """Record the page's policy violations, from its events and from the console."""
    page.add_init_script(WATCH_VIOLATIONS)
    seen = []
    page.on("console", lambda message: seen.append(message.text) if "Content Security Policy" in message.text else None)
    return seen


def violations(page, console):
    return page.evaluate("window.__violations") + console


def a_run_waiting_for_approval():
    run = start_run("t_deleter", {"value": 1}, started_by=TEST)
    advance_run(run.id)  # asks for approval and waits
    return run, Approval.objects.get(run_id=run.id)


def test_every_page_loads_under_the_policy_without_a_violation(transactional_db, admin_user, page, live_server_url):
    FreezeState.objects.get_or_create(id=1)
    run, approval = a_run_waiting_for_approval()
    console = watch(page)
    log_in(page, live_server_url, "ada")
    pages = [
        reverse("runs:list"), reverse("runs:detail", args=[run.id]), reverse("tools:approvals"),
        reverse("tools:approval", args=[approval.id]), reverse("tools:list"), reverse("runs:audit"),
        reverse("runs:workers"), reverse("runs:activity"), reverse("runs:start"),
        reverse("runs:start_agent", args=["t_deleter"]), reverse("demo:world"),
        reverse("admin:index"), reverse("admin:auth_user_changelist"),
        reverse("admin:auth_user_change", args=[admin_user.id]),
    ]
    for path in pages:
        response = page.goto(f"{live_server_url}{path}")
        assert response.status == 200, path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy, (path, policy)
        page.wait_for_load_state("networkidle")
        assert violations(page, console) == [], path

    # The waterfall's bars are placed by static/js/waterfall.js, not by style attributes.
    page.goto(f"{live_server_url}{reverse('runs:detail', args=[run.id])}")
    bar = page.locator("#run-waterfall .wf-bar").first
    place = dict(pair.split(":") for pair in bar.get_attribute("data-place").split(";"))
    assert bar.evaluate("element => [element.style.left, element.style.width]") == [
        f"{float(place['left']):g}%", f"{float(place['width']):g}%"]
    assert float(place["width"]) > 90
    assert violations(page, console) == []


def test_a_confirmation_still_asks_and_live_updates_still_arrive(transactional_db, admin_user, browser, page, live_server_url):
    FreezeState.objects.get_or_create(id=1)
    run, approval = a_run_waiting_for_approval()
    console = watch(page)
    log_in(page, live_server_url, "ada")
    run_page = browser.new_context().new_page()
    run_console = watch(run_page)
    log_in(run_page, live_server_url, "ada")
    run_page.goto(f"{live_server_url}/runs/{run.id}/")
    expect(run_page.locator("#run-header .status")).to_have_text("waiting")

    asked = []

    def answer(dialog, accept):
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.goto(f"{live_server_url}/tools/approvals/{approval.id}/")
    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.get_by_role("button", name="Approve", exact=True).click()
    assert asked == ["Approve t_delete? The run makes the call, which cannot be undone."]
    approval.refresh_from_db()
    assert approval.status == "pending"  # said no: the form was not sent

    page.once("dialog", lambda dialog: answer(dialog, accept=True))
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.locator(".decision")).to_have_text("approved")
    assert len(asked) == 2

    # The freeze asks too, from the form every page carries.
    page.locator(".freeze-control summary").click()
    page.get_by_label("Reason for the freeze").fill("migration")
    page.once("dialog", lambda dialog: answer(dialog, accept=False))
    page.get_by_role("button", name="Freeze", exact=True).click()
    assert asked[-1].startswith("Freeze writes?")
    assert not FreezeState.objects.get(id=1).global_reason

    advance_run(run.id)  # the approved call is made; the open run page hears of it live
    expect(run_page.locator("#run-header .status")).to_have_text("succeeded")
    assert Run.objects.get(id=run.id).status == "succeeded"
    # The waterfall swapped in over the socket is placed too.
    assert run_page.locator("#run-waterfall .wf-bar").last.evaluate("element => element.style.width") != ""
    assert violations(page, console) == []
    assert violations(run_page, run_console) == []
