"""The start form in Chromium, against daphne and a real worker: an operator starts a run from the
runs page, is told what is wrong with the input without losing it, lands on the run, which
runs; then runs it again from its page and downloads its history."""

import json

from playwright.sync_api import expect

from runs.models import AuditEntry, Run
from tests.conftest import log_in


def test_an_operator_starts_a_run_from_the_form_and_runs_it_again(workers, operator, page, live_server_url):
    workers.start()
    log_in(page, live_server_url, "otto")
    page.get_by_role("link", name="Start run").click()
    page.get_by_role("link", name="t_order_form").click()
    expect(page.get_by_role("heading", name="Start a run of t_order_form")).to_be_visible()

    page.get_by_label("customer").fill("A")
    page.get_by_label("quantity").fill("3")
    page.get_by_label("colour").select_option(label="red")
    page.get_by_label("gift").check()
    page.get_by_label("tags").fill('["fragile", "blue"]')
    page.get_by_role("button", name="Start run").click()

    expect(page.locator("#id_in_customer-error")).to_have_text("String should have at least 2 characters")
    expect(page.get_by_label("customer")).to_have_value("A")
    expect(page.get_by_label("tags")).to_have_value('["fragile", "blue"]')
    expect(page.get_by_label("gift")).to_be_checked()
    assert not Run.objects.exists()

    page.get_by_label("customer").fill("Ann")
    page.get_by_role("button", name="Start run").click()

    expect(page.locator("#run-header h1")).to_contain_text("t_order_form")
    run = Run.objects.get()
    assert page.url == f"{live_server_url}/runs/{run.id}/"
    assert run.input["customer"] == "Ann" and run.input["tags"] == ["fragile", "blue"] and run.started_by == "user:otto"
    expect(page.locator("#run-header .title .status")).to_have_text("succeeded", timeout=30_000)

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Run again with the same input").click()
    expect(page).not_to_have_url(f"{live_server_url}/runs/{run.id}/")
    again = Run.objects.exclude(id=run.id).get()
    expect(page).to_have_url(f"{live_server_url}/runs/{again.id}/")
    expect(page.locator("#run-header .title .status")).to_have_text("succeeded", timeout=30_000)
    assert again.input == run.input
    assert list(AuditEntry.objects.order_by("id").values_list("action", "run_id")) == [
        ("start_run", run.id), ("run_again", again.id),
    ]

    with page.expect_download() as download:
        page.get_by_role("link", name="Download history (JSON)").click()
    assert download.value.suggested_filename == f"run-{str(again.id)[:8]}-history.json"
    history = json.loads(open(download.value.path()).read())
    assert history["run"]["id"] == str(again.id) and history["run"]["status"] == "succeeded"
    assert [row["name"] for row in history["journal"]] == ["t_read"]
    assert history["audit"][0]["details"]["rerun_of"] == str(run.id)


def test_a_viewer_finds_no_way_to_start_a_run(viewer, page, live_server_url, transactional_db):
    log_in(page, live_server_url, "vera")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Start run")).to_have_count(0)

    response = page.goto(f"{live_server_url}/runs/start/")

    assert response.status == 403
    expect(page.locator("main")).to_contain_text("This needs the operator role")
