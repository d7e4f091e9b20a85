"""Deployment headers (issue 11, item 12): the Content-Security-Policy on every page, no inline
script, handler or style in a template, and `manage.py check --deploy` clean with the production
settings that docs/security.md documents."""

import re
import secrets
import subprocess
import sys

from django.conf import settings

from tests.conftest import PROJECT_DIR, subprocess_env

TEMPLATES = PROJECT_DIR / "templates"
# What the policy refuses: an inline <script> (without src), a <style> element, an on...=
# event handler, a style= attribute, htmx's hx-on (which needs eval).
INLINE = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>|<style[\s>]|\son[a-z]+\s*=|\sstyle\s*=|\shx-on", re.IGNORECASE)


def production_settings():
    """The block of variables under "Production settings" in docs/security.md."""
    text = (PROJECT_DIR / "docs" / "security.md").read_text()
    section = text.split("## Production settings", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    return dict(line.split("=", 1) for line in block.splitlines() if line.strip())


def check_deploy(**variables):
    env = subprocess_env(**variables)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the test process's own (conftest.py), not a deployment's
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
    )


def test_check_deploy_is_clean_with_the_documented_production_settings():
    variables = production_settings()
    variables["SECRET_KEY"] = secrets.token_urlsafe(50)  # the documented value is a placeholder
    assert variables.pop("DEBUG") == "0"  # as subprocess_env sets it
    result = check_deploy(**variables)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_them():
    result = check_deploy(SECRET_KEY=secrets.token_urlsafe(50))
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


def directives(response):
    """The response's policy, as {directive: sources}."""
    parts = (part.split() for part in response["Content-Security-Policy"].split(";") if part.strip())
    return {name: sources for name, *sources in parts}


POLICY = {
    "default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'"], "img-src": ["'self'"],
    "connect-src": ["'self'"], "object-src": ["'none'"], "base-uri": ["'none'"],
    "form-action": ["'self'"], "frame-ancestors": ["'none'"],
}


def test_every_page_carries_the_policy(client, viewer):
    client.force_login(viewer)
    for path in ("/login/", "/", "/audit/", "/admin/login/", "/no-such-page/"):
        assert directives(client.get(path)) == POLICY, path


def test_only_the_queue_dashboard_may_run_inline_scripts(admin_client):
    assert directives(admin_client.get("/django-rq/")) == {**POLICY, "script-src": ["'self'", "'unsafe-inline'"]}


def test_no_template_brings_an_inline_script_handler_or_style():
    found = [
        f"{path.relative_to(PROJECT_DIR)}: {match.group(0)}"
        for path in TEMPLATES.rglob("*.html")
        for match in INLINE.finditer(path.read_text())
    ]
    assert found == []


def test_the_https_settings_are_off_by_default():
    assert settings.SECURE_HSTS_SECONDS == 0
    assert settings.SECURE_SSL_REDIRECT is False
    assert settings.SECURE_PROXY_SSL_HEADER is None


def test_a_proxy_header_that_is_not_a_header_name_stops_start_up():
    result = check_deploy(SECRET_KEY="x" * 60, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert result.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto: https' is not a header name" in result.stderr
