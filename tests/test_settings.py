"""Settings reject what they do not understand, naming the variable."""

import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import PROJECT_DIR

LOAD_SETTINGS = "import django; django.setup()"


def load_settings(**env):
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "k", "DEBUG": "0"}
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", LOAD_SETTINGS],
        cwd=PROJECT_DIR, capture_output=True, text=True,
        env={k: v for k, v in base.items() if v is not None} | {"DJANGO_SETTINGS_MODULE": "agentops.settings"},
    )


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


def test_good_settings_load():
    result = load_settings()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_a_bad_debug_value_is_refused_by_name(value):
    result = load_settings(DEBUG=value)

    assert result.returncode != 0
    assert f"DEBUG={value!r} is not understood" in last_line(result)


def test_a_missing_secret_key_with_debug_off_is_refused_by_name():
    result = load_settings(SECRET_KEY=None, DEBUG="0")

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in last_line(result)


def test_debug_on_needs_no_secret_key():
    assert load_settings(SECRET_KEY=None, DEBUG="1").returncode == 0


def test_a_database_url_that_is_not_postgres_is_refused_by_name():
    result = load_settings(DATABASE_URL="mysql://root@localhost/agentops")

    assert result.returncode != 0
    assert "DATABASE_URL='mysql://root@localhost/agentops'" in last_line(result)


def test_a_redis_url_that_is_not_redis_is_refused_by_name():
    result = load_settings(REDIS_URL="http://localhost:6379")

    assert result.returncode != 0
    assert "REDIS_URL='http://localhost:6379'" in last_line(result)


def test_env_example_lists_every_variable_the_settings_read():
    text = (PROJECT_DIR / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z_]+)=", text, flags=re.MULTILINE))

    assert listed == settings.ENVIRONMENT_VARIABLES


def test_the_rq_dashboard_shows_the_queue_the_workers_take_jobs_from():
    show = ("import django; django.setup(); from django.conf import settings; from runs.queue import run_queue; "
            "print(list(settings.RQ_QUEUES), run_queue().name)")
    result = subprocess.run(
        [sys.executable, "-c", show], cwd=PROJECT_DIR, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "SECRET_KEY": "k", "DEBUG": "0", "DJANGO_SETTINGS_MODULE": "agentops.settings",
             "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/shop_agents"},
    )
    assert result.stdout.split() == ["['runs.shop_agents']", "runs.shop_agents"], result.stderr
