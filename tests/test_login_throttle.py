"""Login throttling (issue 11, "sessions and sockets"): failed logins past LOGIN_FAILURE_LIMIT
lock the username, and the address, out for LOGIN_LOCKOUT_MINUTES; the lockout is audited."""

import pytest
from django.conf import settings

from runs.models import AuditEntry
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def log_in(client, username, password):
    return client.post("/login/", {"username": username, "password": password})


def test_a_username_is_locked_out_after_too_many_failures_even_with_the_right_password(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, operator.username, "wrong").status_code == 200  # the form again
    assert log_in(client, operator.username, "wrong").status_code == 429  # the last allowed failure
    locked = log_in(client, operator.username, PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_audited_once(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT + 3):
        log_in(client, operator.username, "wrong")
    entries = AuditEntry.objects.filter(action="login_locked_out")
    assert entries.count() == 1
    assert entries[0].target == f"user {operator.username}"
    assert entries[0].details["ip_address"] == "127.0.0.1"


def test_a_success_before_the_limit_resets_the_count(client, operator):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, operator.username, "wrong")
    assert log_in(client, operator.username, PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, operator.username, "wrong")
    assert log_in(client, operator.username, PASSWORD).status_code == 302
