"""The tools page shows each tool's circuit breaker (closed, open until when, half-open, the
failures of its window), and an admin resets one with a POST that carries its CSRF token; an
operator may not. With Redis down the page says the breakers' state is unknown."""

import re
import time

import pytest
from django.test import Client

from runs.models import AuditEntry
from runs.processes import PrivateRedis
from tests.conftest import messages_of
from tools import breakers
from tools.sync import sync_tools

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def breakers_judge_five_calls(settings):
    """These tests make a handful of calls: a breaker that judges at least five (the default
    judges twenty, docs/breakers.md)."""
    settings.BREAKER_MIN_CALLS = 5

FLAKY, DOWN, PROBED = "t_read", "t_idem", "t_recon"


@pytest.fixture
def tools_with_breakers(monkeypatch):
    """Three tools of the test agents: one with failures in its window, one open, one half-open."""
    sync_tools()
    names = (FLAKY, DOWN, PROBED)
    link = breakers._link()
    for name in names:
        link.client.delete(*breakers._keys(name))
    breakers.record(FLAKY, failed=False)
    breakers.record(FLAKY, failed=True)
    for _ in range(5):
        breakers.record(DOWN, failed=True)
    # Opened as if a minute ago: half-open now.
    monkeypatch.setattr(breakers, "clock", lambda: time.time() - 60)
    for _ in range(5):
        breakers.record(PROBED, failed=True)
    monkeypatch.undo()
    yield names
    for name in names:
        link.client.delete(*breakers._keys(name))


def row(page, name):
    return re.search(rf'<tr id="tool-{name}".*?</tr>', page, flags=re.DOTALL).group(0)


def test_the_tools_page_shows_each_breaker(client, viewer, tools_with_breakers):
    client.force_login(viewer)

    page = client.get("/tools/").content.decode()

    assert '<span class="status breaker-closed">closed</span>' in row(page, FLAKY)
    assert "1 of 2 failed in the last 30 s" in row(page, FLAKY)
    down = row(page, DOWN)
    assert '<span class="status breaker-open">open</span>' in down
    assert re.search(r'half-opens <time datetime="[^"]+" title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">in \d+ s</time>', down), down
    assert "5 of 5 failed in the last 30 s" in down
    assert '<span class="status breaker-half_open">half-open</span>' in row(page, PROBED)
    assert "the next call is a probe" in row(page, PROBED)
    assert "no calls in the last 30 s" in row(page, "t_plain")
    assert "Reset" not in page  # a viewer may not


def test_an_admin_resets_a_breaker_with_the_pages_csrf_token(admin_user, tools_with_breakers):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get("/tools/").content.decode()
    form = re.search(r'<form method="post" action="/tools/breakers/reset/">.*?</form>', row(page, DOWN), flags=re.DOTALL).group(0)
    assert f'data-confirm="Reset the breaker of {DOWN}? It closes and forgets its failures' in form
    assert "<form" not in row(page, "t_plain")  # nothing to reset
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)

    assert client.post("/tools/breakers/reset/", {"tool": DOWN}).status_code == 403  # no token
    assert breakers.check(DOWN).state == "open"
    response = client.post("/tools/breakers/reset/", {"tool": DOWN, "next": "/tools/", "csrfmiddlewaretoken": token},
                           follow=True)

    assert response.redirect_chain == [("/tools/", 302)]
    assert messages_of(response) == [f"Breaker of {DOWN} reset: it is closed and its window is empty; the next call of {DOWN} goes through."]
    assert breakers.check(DOWN) == breakers.Verdict(allowed=True)
    assert '<span class="status breaker-closed">closed</span>' in row(response.content.decode(), DOWN)
    entry = AuditEntry.objects.get(action="reset_breaker")
    assert (entry.username, entry.target, entry.details["state_before"]) == (admin_user.username, DOWN, "open")


def test_an_operator_may_not_reset_a_breaker(client, operator, tools_with_breakers):
    client.force_login(operator)

    assert "Reset" not in client.get("/tools/").content.decode()
    assert client.post("/tools/breakers/reset/", {"tool": DOWN}).status_code == 403
    assert breakers.check(DOWN).state == "open"
    assert not AuditEntry.objects.exists()


def test_resetting_a_tool_that_does_not_exist_says_so(client, admin_user):
    client.force_login(admin_user)

    response = client.post("/tools/breakers/reset/", {"tool": "no_such_tool"}, follow=True)

    assert messages_of(response) == ["Not reset: there is no tool named 'no_such_tool'."]
    assert not AuditEntry.objects.exists()


def test_with_redis_down_the_page_says_the_breakers_state_is_unknown(client, admin_user, settings):
    sync_tools()
    server = PrivateRedis()
    server.start()
    server.stop()
    settings.REDIS_URL = server.url
    client.force_login(admin_user)

    response = client.get("/tools/")
    page = response.content.decode()

    assert response.status_code == 200
    assert "The breakers' state is unknown: Redis, where they live, does not answer." in page
    assert '<span class="muted">unknown</span>' in row(page, FLAKY)
    response = client.post("/tools/breakers/reset/", {"tool": FLAKY}, follow=True)
    assert messages_of(response) == ["Not reset: Redis does not answer, and the breakers live there; try again once it is back."]
    assert not AuditEntry.objects.exists()
