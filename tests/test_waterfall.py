"""The run page's waterfall: steps by name against a readable time axis, waits drawn and named."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs.actors import Actor
from runs.engine import advance_run
from runs.models import Run
from runs.moves import start_run
from runs.timeline import MIN_BAR_PERCENT, readable_seconds, ticks
from tests.agents import TEST
from tests.conftest import log_in
from tools.freeze import lift_freeze, set_freeze
from tools.models import Approval, FreezeState

pytestmark = pytest.mark.django_db(transaction=True)


def lanes(client, run, query=""):
    """(label, note) of each lane, as the page shows them."""
    html = client.get(f"/runs/{run.id}/{query}").content.decode()
    section = html.split('id="run-waterfall"')[1].split("</section>")[0]
    labels = [re.sub(r"<[^>]+>", "", label).strip() for label in re.findall(r'role="rowheader">(.*?)</span>', section)]
    notes = re.findall(r'class="wf-note[^"]*"[^>]*>(.*?)</span>', section)
    return list(zip(labels, notes)), section


def test_the_axis_reads_in_round_units():
    assert [label for _, label in ticks(3.2)] == ["0", "500 ms", "1 s", "1.5 s", "2 s", "2.5 s", "3 s"]
    assert [label for _, label in ticks(3700)][-2:] == ["50 min", "1 h"]
    assert [label for _, label in ticks(200000)] == ["0", "12 h", "1 d", "1 d 12 h", "2 d"]
    assert readable_seconds(90) == "1 min 30 s"


def test_a_pending_approval_is_a_lane_and_a_freeze_is_a_named_wait(client, viewer):
    FreezeState.objects.get_or_create(id=1)
    set_freeze(reason="maintenance window", actor=Actor("user", "ada"))
    run = start_run("t_deleter", {"value": 1}, started_by=TEST)
    advance_run(run.id)
    assert Run.objects.get(id=run.id).wait_kind == "freeze"
    lift_freeze(actor=Actor("user", "ada"))
    advance_run(run.id)
    client.force_login(viewer)

    shown, section = lanes(client, run)

    assert [label for label, _ in shown] == ["freeze", "#1 approval of t_delete"]
    assert shown[0][1].startswith("frozen: maintenance window, ")
    assert shown[1][1].startswith("waiting for approval of t_delete (") and "so far)" in shown[1][1]
    assert "wf-open" in section.split("#1 approval of t_delete")[1]  # open-ended: still waiting


def test_a_child_wait_is_named(client, viewer):
    parent = start_run("t_parent", {"value": 3}, started_by=TEST)
    advance_run(parent.id)
    child = Run.objects.get(parent=parent)
    client.force_login(viewer)

    shown, _ = lanes(client, parent)

    assert shown[0][0] == "#1 start child run t_child"
    assert shown[1][0] == f"child run {str(child.id)[:8]}"
    assert shown[1][1].startswith(f"waiting for child run {str(child.id)[:8]} (")


def test_a_window_of_steps_zooms_the_waterfall_and_the_list(client, viewer):
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)
    advance_run(run.id)
    client.force_login(viewer)

    everything, _ = lanes(client, run)
    assert len(everything) == 7 and "whole run" not in client.get(f"/runs/{run.id}/").content.decode()
    zoomed, section = lanes(client, run, "?from=2&to=3")

    assert [label for label, _ in zoomed] == ["#2 tool t_idem", "#3 tool t_recon"]
    page = client.get(f"/runs/{run.id}/?from=2&to=3").content.decode()
    assert "whole run" in page
    # The zoom form is not in the live part, which a live update replaces while one types.
    assert 'name="to"' in page and 'name="to"' not in section
    assert 'id="step-2"' in page and 'id="step-3"' in page
    assert 'id="step-1"' not in page and 'id="step-4"' not in page


def test_a_short_step_in_a_long_run_stays_visible(client, viewer):
    run = start_run("t_deleter", {"value": 1}, started_by=TEST)
    advance_run(run.id)  # waits for approval from now on
    # The run started a day ago: its request and its wait stretch across the axis.
    Run.objects.filter(id=run.id).update(started_at=timezone.now() - timedelta(days=1))
    Approval.objects.filter(run=run).update(requested_at=timezone.now() - timedelta(days=1))
    client.force_login(viewer)

    shown, section = lanes(client, run)

    widths = [float(w) for w in re.findall(r"width:([\d.]+)\"", section)]
    assert widths and min(widths) >= MIN_BAR_PERCENT
    assert "1 d" in section  # the axis says days, not 86400 s


def test_a_real_run_shows_named_steps_a_named_sleep_and_a_pending_approval(workers, viewer, page, live_server_url):
    workers.start()
    run = start_run("t_waterfall", {"seconds": 1}, started_by=TEST)
    log_in(page, live_server_url, "vera")
    page.goto(f"{live_server_url}/runs/{run.id}/")
    page.evaluate("window.__notReloaded = true")

    waterfall = page.locator("#run-waterfall")
    # The page follows the run live: the approval arrives after the sleep, without a reload.
    expect(waterfall).to_contain_text("#3 approval of t_delete", timeout=20_000)
    expect(waterfall).to_contain_text("waiting for approval of t_delete")
    expect(waterfall.get_by_role("rowheader")).to_have_text(["#1 tool w_read", "#2 sleep 1 s", "#3 approval of t_delete"])
    expect(waterfall.locator(".wf-note").nth(1)).to_contain_text("slept")
    expect(waterfall.locator(".wf-bar.wait-approval.wf-open")).to_have_count(1)
    expect(waterfall.locator(".wf-tick").first).to_have_text("0")
    assert page.evaluate("window.__notReloaded === true")  # it came over the websocket
