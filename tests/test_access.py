"""Every page needs a login; every POST needs its CSRF token; roles hold what roles.py says."""

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern

from runs.roles import ROLE_PERMISSIONS

LOGIN_PAGES = ("/login/", "/admin/login/")
# Views that must answer an anonymous visitor: the login pages themselves and logout.
OPEN_VIEWS = {"login", "logout", "admin:login", "admin:logout",
              # Prometheus does not log in: 404 without METRICS_TOKEN set, 403 without the
              # token (tests/test_operations.py).
              "runs:prometheus"}


def route_text(pattern):
    """A concrete path piece for a URL pattern, its parameters filled with 1."""
    if isinstance(pattern, RegexPattern):
        text = pattern.regex.pattern.lstrip("^").removesuffix("$").removesuffix("\\Z")
        text = text.replace("/?", "/").replace("\\.", ".")
        return re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", text)
    text = re.sub(r"<uuid:[^>]+>", "00000000-0000-0000-0000-000000000001", str(pattern))
    text = re.sub(r"<slug:[^>]+>", "pause", text)
    return re.sub(r"<[^>]+>", "1", text)


def every_url():
    """(name, path) for each URL pattern of the project."""

    def walk(patterns, prefix, namespace):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                ns = pattern.namespace or namespace
                yield from walk(pattern.url_patterns, prefix + route_text(pattern.pattern), ns)
            elif isinstance(pattern, URLPattern):
                name = f"{namespace}:{pattern.name}" if namespace else pattern.name
                if name not in OPEN_VIEWS:
                    yield name, prefix + route_text(pattern.pattern)

    return walk(get_resolver().url_patterns, "/", None)


URLS = sorted(set(every_url()))


def test_the_project_has_pages_to_check():
    names = {name for name, _ in URLS}
    assert "runs:list" in names
    assert "admin:index" in names


@pytest.mark.parametrize(("name", "path"), URLS, ids=[name or path for name, path in URLS])
def test_an_anonymous_request_is_sent_to_the_login_page(client, db, name, path):
    response = client.get(path)

    assert response.status_code == 302, f"{name} at {path} answered {response.status_code}"
    assert response["Location"].startswith(LOGIN_PAGES), response["Location"]


def test_a_login_post_without_csrf_is_refused(db, operator):
    client = Client(enforce_csrf_checks=True)

    response = client.post("/login/", {"username": "otto", "password": "a-long-test-password"})

    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_a_signed_in_post_without_csrf_is_refused(db, operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    response = client.post("/logout/")

    assert response.status_code == 403
    assert client.session.get("_auth_user_id") == str(operator.pk)


def test_each_role_holds_exactly_its_permissions(db):
    for role, codes in ROLE_PERMISSIONS.items():
        group = Group.objects.get(name=role)
        held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        assert held == set(codes), role


def test_a_viewer_sees_the_runs_page(client, viewer):
    client.force_login(viewer)

    response = client.get("/")

    assert response.status_code == 200
    assert b"No runs yet" in response.content


def test_a_user_without_a_role_is_told_to_ask_for_one(client, outsider):
    client.force_login(outsider)

    response = client.get("/")

    assert response.status_code == 403
    assert b"Ask an admin" in response.content


@pytest.mark.parametrize("path", ["/runs/00000000-0000-0000-0000-000000000001/pause/",
                                  "/runs/00000000-0000-0000-0000-000000000001/steps/1/resolve/"])
def test_an_operator_action_without_csrf_is_refused(db, operator, path):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.post(path, {"reason": "x", "decision": "fail"}).status_code == 403


def test_a_refused_request_is_logged_in_one_line_without_a_traceback(client, viewer):
    """Fault found by a new user: each 403 printed a traceback in the server's log."""
    import io
    import logging

    from django.conf import settings

    from runs.logs import RefusalsInOneLine
    from runs.moves import start_run
    from tests.agents import TEST

    assert "refusals_in_one_line" in settings.LOGGING["handlers"]["console"]["filters"]
    run = start_run("t_sleeper", {"seconds": 1}, started_by=TEST)
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RefusalsInOneLine())
    logging.getLogger("django.request").addHandler(handler)
    client.force_login(viewer)
    try:
        assert client.post(f"/runs/{run.id}/cancel/", {"reason": "forged"}).status_code == 403
    finally:
        logging.getLogger("django.request").removeHandler(handler)

    logged = handler.stream.getvalue()
    assert f"Forbidden (Permission denied): /runs/{run.id}/cancel/" in logged
    assert "Traceback" not in logged and len(logged.strip().splitlines()) == 1
