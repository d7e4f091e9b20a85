"""A person logs in through the real form, in Chromium, against daphne."""

import re

from playwright.sync_api import expect

from tests.conftest import log_in


def test_an_operator_logs_in_and_sees_the_empty_runs_page(transactional_db, operator, page, live_server_url):
    log_in(page, live_server_url, "otto")

    expect(page).to_have_url(f"{live_server_url}/")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="No runs yet")).to_be_visible()
    expect(page.get_by_text("manage.py start_run")).to_be_visible()
    expect(page.locator(".whoami")).to_contain_text("otto")
    expect(page.locator(".whoami .role")).to_have_text("operator")


def test_a_wrong_password_shows_an_error_and_no_page(transactional_db, operator, page, live_server_url):
    log_in(page, live_server_url, "otto", password="not-the-password")

    expect(page.get_by_role("alert")).to_contain_text("do not match")
    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.get_by_role("heading", name="No runs yet")).to_have_count(0)


def test_logging_out_returns_to_the_login_page(transactional_db, viewer, page, live_server_url):
    log_in(page, live_server_url, "vera")
    expect(page.get_by_role("heading", name="No runs yet")).to_be_visible()

    page.get_by_role("button", name="Log out").click()

    expect(page.get_by_role("heading", name="Log in to agentops")).to_be_visible()
    page.goto(f"{live_server_url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
