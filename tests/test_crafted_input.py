"""Crafted input gets a 400 or a form error naming the field, never a 500 (issue 11, "500s on
crafted input"): a NUL in any parameter, numbers that only look like numbers, impossible
times, JSON nested thousands deep."""

import html
import uuid

import pytest

from runs.moves import start_run
from tests.agents import TEST

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("path", [
    "/?q=%00", "/?agent=a%00b", "/?status=%00", "/audit/?user=%00", "/audit/?action=x%00",
    "/tools/?all=%00",
])
def test_a_nul_in_a_query_parameter_is_a_400_that_names_it(client, viewer, path):
    client.force_login(viewer)
    response = client.get(path)
    assert response.status_code == 400
    name = path.split("?")[1].split("=")[0]
    page = html.unescape(response.content.decode())
    assert f"'{name}'" in page and "NUL" in page


@pytest.mark.parametrize("cursor", [
    "2026-01-01T00:00:00+99:00~" + str(uuid.uuid4()),
    "9999-12-31T23:59:59-23:59~" + str(uuid.uuid4()),
    "0001-01-01T00:00:00+23:59~" + str(uuid.uuid4()),
])
def test_an_impossible_page_cursor_is_not_a_500(client, viewer, cursor):
    client.force_login(viewer)
    response = client.get("/", {"after": cursor})
    assert response.status_code in (200, 400)


def test_a_superscript_digit_is_not_a_number(client, viewer):
    run = start_run("t_echo_agent", {"text": "x"}, started_by=TEST)
    client.force_login(viewer)
    assert client.get("/audit/", {"before": "²"}).status_code == 400
    assert client.get(f"/runs/{run.id}/", {"from": "²"}).status_code == 400


def test_a_nul_in_a_posted_reason_is_a_400(client, operator):
    run = start_run("t_echo_agent", {"text": "x"}, started_by=TEST)
    client.force_login(operator)
    response = client.post(f"/runs/{run.id}/cancel/", {"reason": "stop\x00now"})
    assert response.status_code == 400 and "'reason'" in html.unescape(response.content.decode())
    run.refresh_from_db()
    assert run.status == "queued"


def test_json_nested_thousands_deep_is_a_form_error(client, operator):
    client.force_login(operator)
    response = client.post("/runs/start/t_untyped/", {"input": DEEP, "idempotency_key": "k-deep-1"})
    assert response.status_code in (200, 400)
    assert "nested" in response.content.decode()


def test_a_non_numeric_tool_in_the_permission_form_is_a_form_error(client):
    from tests.conftest import make_user

    root = make_user("root_user", is_superuser=True, is_staff=True)
    client.force_login(root)
    response = client.post("/admin/tools/toolpermission/add/", {"tool": "abc", "agent": "", "rule": "allow"})
    assert response.status_code == 200  # the form again, with its error
    assert "errorlist" in response.content.decode()


def test_run_input_over_the_size_or_depth_limit_is_refused_at_start(settings):
    from runs.agents import InvalidInput

    settings.RUN_INPUT_MAX_BYTES = 1000
    with pytest.raises(InvalidInput, match="RUN_INPUT_MAX_BYTES"):
        start_run("t_echo_agent", {"text": "x" * 2000}, started_by=TEST)
    with pytest.raises(InvalidInput, match="nested more than"):
        start_run("t_echo_agent", {"text": "x", "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, started_by=TEST)
    with pytest.raises(InvalidInput, match="NUL"):
        start_run("t_echo_agent", {"text": "a\x00b"}, started_by=TEST)
