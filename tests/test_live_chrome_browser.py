"""What every page shows follows live (issue 10, fault 7): the freeze banner and the approvals
badge, in Chromium against daphne, changed by another page or a service while the pages stay open;
and the lease holder's heartbeat age on a run's page (fault 12), which no live update refreshes."""

import re
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from playwright.sync_api import expect

from runs import services
from runs.actors import Actor
from runs.engine import advance_run
from runs.models import Run, heartbeat_seconds
from runs.moves import claim, start_run
from tests.agents import TEST
from tests.conftest import log_in
from tools.freeze import lift_freeze, set_freeze
from tools.models import Approval, FreezeState

NOT_RELOADED = "window.__notReloaded = true"


def open_page(page, url):
    page.goto(url)
    page.evaluate(NOT_RELOADED)


def still_the_same_page(page):
    return page.evaluate("window.__notReloaded === true")


def test_a_freeze_lifted_elsewhere_leaves_no_banner_on_open_pages(transactional_db, admin_user, browser, page, live_server_url):
    FreezeState.objects.get_or_create(id=1)
    ada = Actor.for_user(admin_user)
    set_freeze(reason="database migration", actor=ada)
    log_in(page, live_server_url, "ada")
    other = browser.new_context().new_page()
    log_in(other, live_server_url, "ada")
    open_page(page, f"{live_server_url}/")
    open_page(other, f"{live_server_url}/tools/")
    for tab in (page, other):
        expect(tab.locator("#freeze-banner")).to_contain_text("database migration")

    lift_freeze(actor=ada)  # as another tab, the admin or a script would
    for tab in (page, other):
        expect(tab.locator("#freeze-banner")).to_have_count(0)
        assert still_the_same_page(tab)

    set_freeze(reason="payments outage", actor=ada)
    for tab in (page, other):
        expect(tab.locator("#freeze-banner")).to_contain_text("Writes are frozen for every agent: payments outage")
    # The banner that arrived over the socket lifts the freeze too (its form carries a CSRF
    # token), and the other page follows.
    page.get_by_role("button", name="Lift the freeze").click()
    expect(page.locator(".messages")).to_contain_text("Freeze lifted")
    expect(other.locator("#freeze-banner")).to_have_count(0)
    assert still_the_same_page(other)
    assert not FreezeState.objects.get(id=1).global_reason


def test_the_approvals_badge_follows_requests_made_and_withdrawn(transactional_db, operator, page, live_server_url):
    log_in(page, live_server_url, "otto")
    open_page(page, f"{live_server_url}/audit/")
    expect(page.locator("#pending-approvals")).to_have_count(0)

    first = start_run("t_deleter", {"value": 1}, started_by=TEST)
    advance_run(first.id)  # asks for approval and waits
    expect(page.locator("#pending-approvals")).to_have_text("1")
    second = start_run("t_deleter", {"value": 2}, started_by=TEST)
    advance_run(second.id)
    expect(page.locator("#pending-approvals")).to_have_text("2")

    services.cancel(first.id, actor=Actor.for_user(operator), reason="not needed")  # withdraws its request
    expect(page.locator("#pending-approvals")).to_have_text("1")
    assert Approval.objects.filter(status="withdrawn").count() == 1
    assert still_the_same_page(page)


def test_a_silent_workers_heartbeat_age_counts_on_until_it_is_flagged(transactional_db, viewer, page, live_server_url):
    """A worker that died sends no more beats, so no live update comes: the page counts on."""
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    claim(run.id, "worker-that-died")
    interval = heartbeat_seconds()
    # Its last beat was two seconds short of the interval ago.
    Run.objects.filter(id=run.id).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.RUN_LEASE_SECONDS - interval + 2))
    log_in(page, live_server_url, "vera")
    open_page(page, f"{live_server_url}/runs/{run.id}/")
    beat = page.locator("#run-header .heartbeat")
    expect(beat).not_to_have_class(re.compile("late"))
    expect(beat).to_have_class(re.compile("late"), timeout=interval * 1000)
    expect(beat).to_contain_text(f"late, a beat is due every {interval:g} s")
    assert int(beat.locator(".age").inner_text()) > interval
    assert still_the_same_page(page)
