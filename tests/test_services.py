"""`manage.py services`: starts a Redis that is installed but down, or names what to install."""

import shutil
import subprocess
import sys

import psycopg
import redis
from django.db import connection

from tests.conftest import PROJECT_DIR, free_port, subprocess_env


def run_services(**env):
    return subprocess.run(
        [sys.executable, "manage.py", "services"],
        cwd=PROJECT_DIR, env=subprocess_env(**env), capture_output=True, text=True, timeout=60,
    )


def test_it_starts_redis_when_it_is_installed_but_down(db):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    result = run_services(REDIS_URL=url)

    try:
        assert result.returncode == 0, result.stderr
        assert f"Redis does not answer at 127.0.0.1:{port}; starting a private instance" in result.stdout
        assert redis.Redis.from_url(url).ping()
        # A second call finds it up and starts nothing.
        again = run_services(REDIS_URL=url)
        assert again.returncode == 0 and "starting" not in again.stdout
    finally:
        redis.Redis.from_url(url).shutdown(nosave=True)


def test_it_names_what_to_install_when_redis_is_missing(db):
    port = free_port()
    # A PATH without redis-server: this machine, had Redis never been installed.
    assert shutil.which("redis-server", path="/nonexistent") is None

    result = run_services(REDIS_URL=f"redis://127.0.0.1:{port}/0", PATH="/nonexistent")

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"CommandError: Redis does not answer at 127.0.0.1:{port} and redis-server is not "
        "installed: install it (Debian: apt-get install redis-server) or set REDIS_URL"
    ]


def test_it_creates_a_missing_database(db):
    name = "agentops_services_test"
    env_url = subprocess_env()["DATABASE_URL"].rsplit("/", 1)[0] + f"/{name}"
    try:
        result = run_services(DATABASE_URL=env_url)
        assert result.returncode == 0, result.stderr
        assert f"Created database {name}" in result.stdout
    finally:
        db = connection.settings_dict
        with psycopg.connect(
            dbname="postgres", host=db["HOST"], port=db["PORT"], user=db["USER"],
            password=db["PASSWORD"] or None, autocommit=True,
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
