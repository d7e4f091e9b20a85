"""The Django admin's user pages (issue 11, "admins who can make superusers"): the admin role
manages people through their role groups; only a superuser grants superuser status or direct
permissions, or changes a superuser; every change of access is audited with old and new values."""

import pytest
from django.contrib.auth.models import Group, Permission, User

from runs.models import AuditEntry
from runs.roles import ADMIN, OPERATOR, VIEWER
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def change_form(user):
    data = {
        "username": user.username, "first_name": "", "last_name": "", "email": "",
        "is_active": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-01-01", "initial-date_joined_1": "00:00:00",
    }
    if user.is_staff:
        data["is_staff"] = "on"
    return data


def test_an_admin_sees_no_superuser_or_permission_fields(client, admin_user):
    target = make_user("tom", VIEWER)
    client.force_login(admin_user)
    page = client.get(f"/admin/auth/user/{target.id}/change/").content.decode()
    assert 'name="groups"' in page
    assert 'name="is_superuser"' not in page
    assert 'name="user_permissions"' not in page


def test_an_admin_cannot_make_a_superuser_or_grant_a_permission_directly(client, admin_user):
    target = make_user("tom", VIEWER)
    client.force_login(admin_user)
    data = change_form(target) | {
        "is_superuser": "on", "groups": [Group.objects.get(name=VIEWER).id],
        "user_permissions": [Permission.objects.get(codename="delete_user").id],
    }
    response = client.post(f"/admin/auth/user/{target.id}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    target.refresh_from_db()
    assert not target.is_superuser
    assert not target.user_permissions.exists()


def test_an_admin_cannot_change_a_superuser(client, admin_user):
    root = make_user("root_user", is_superuser=True, is_staff=True)
    client.force_login(admin_user)
    # Superusers are not in an admin's list: their pages send the admin back to the index.
    assert client.get("/admin/auth/user/").content.decode().count("root_user") == 0
    assert client.get(f"/admin/auth/user/{root.id}/change/").status_code == 302
    client.post(f"/admin/auth/user/{root.id}/change/", change_form(root) | {"username": "taken_over"})
    client.post(f"/admin/auth/user/{root.id}/password/", {"password1": "x-Secret-123", "password2": "x-Secret-123"})
    client.post(f"/admin/auth/user/{root.id}/delete/", {"post": "yes"})
    client.post("/admin/auth/user/", {"action": "delete_selected", "_selected_action": [root.id], "post": "yes"})
    root.refresh_from_db()
    assert root.username == "root_user" and root.check_password(PASSWORD)
    assert User.objects.filter(id=root.id).exists()


def test_a_change_of_role_is_audited_with_old_and_new_values(client, admin_user):
    target = make_user("tom", VIEWER)
    client.force_login(admin_user)
    data = change_form(target) | {"groups": [Group.objects.get(name=OPERATOR).id]}
    assert client.post(f"/admin/auth/user/{target.id}/change/", data).status_code == 302
    entry = AuditEntry.objects.get(action="change_user_access")
    assert entry.username == admin_user.username and entry.target == "user tom"
    assert entry.details["groups"] == {"old": [VIEWER], "new": [OPERATOR]}


def test_a_superuser_may_grant_superuser_and_it_is_audited(client):
    root = make_user("root_user", is_superuser=True, is_staff=True)
    target = make_user("tom", ADMIN, is_staff=True)
    client.force_login(root)
    data = change_form(target) | {"is_superuser": "on", "groups": [Group.objects.get(name=ADMIN).id]}
    assert client.post(f"/admin/auth/user/{target.id}/change/", data).status_code == 302
    target.refresh_from_db()
    assert target.is_superuser
    entry = AuditEntry.objects.get(action="change_user_access")
    assert entry.details["is_superuser"] == {"old": False, "new": True}


def test_adding_deleting_and_setting_a_password_are_audited(client, admin_user):
    client.force_login(admin_user)
    response = client.post("/admin/auth/user/add/", {
        "username": "newbie", "password1": "a-Long-password-41", "password2": "a-Long-password-41",
        "usable_password": "true",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    newbie = User.objects.get(username="newbie")
    assert AuditEntry.objects.filter(action="add_user", target="user newbie").exists()
    response = client.post(f"/admin/auth/user/{newbie.id}/password/",
                           {"password1": "another-Long-pw-42", "password2": "another-Long-pw-42", "usable_password": "true"})
    assert response.status_code == 302
    assert AuditEntry.objects.filter(action="set_password", target="user newbie").exists()
    client.post(f"/admin/auth/user/{newbie.id}/delete/", {"post": "yes"})
    assert not User.objects.filter(username="newbie").exists()
    assert AuditEntry.objects.filter(action="delete_user", target="user newbie").exists()
