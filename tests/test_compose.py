"""docker-compose.yml, checked by reading it: there is no Docker engine on this machine."""

import shlex

import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands

from tests.conftest import PROJECT_DIR

COMPOSE = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def argv_lines(command):
    """Each command line a service runs, as a list of words (sh -c "a && b" gives two)."""
    words = command if isinstance(command, list) else shlex.split(command)
    if words[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in words[2].split("&&")]
    return [words]


def test_it_describes_the_processes():
    assert set(SERVICES) == {"postgres", "redis", "web", "worker", "sweeper"}


@pytest.mark.parametrize("name", ["postgres", "redis", "web", "worker", "sweeper"])
def test_each_service_has_a_healthcheck(name):
    assert SERVICES[name]["healthcheck"]["test"]


@pytest.mark.parametrize("name", ["web", "worker", "sweeper"])
def test_each_project_command_exists_in_the_project(name):
    commands = get_commands()
    for argv in argv_lines(SERVICES[name]["command"]):
        assert argv[0] == "python", argv
        if argv[1] == "manage.py":
            assert argv[2] in commands, f"{name} runs manage.py {argv[2]}, which does not exist"
        else:
            assert argv[1:3] == ["-m", "daphne"], argv
            module, _, attribute = argv[-1].partition(":")
            assert (PROJECT_DIR / (module.replace(".", "/") + ".py")).exists(), module
            assert attribute == "application"


@pytest.mark.parametrize("name", ["web", "worker", "sweeper"])
def test_every_variable_it_sets_is_one_the_settings_read(name):
    environment = set(SERVICES[name]["environment"])

    assert environment <= settings.ENVIRONMENT_VARIABLES, environment - settings.ENVIRONMENT_VARIABLES
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"} <= environment


@pytest.mark.parametrize("name", ["postgres", "redis", "web", "worker", "sweeper"])
def test_each_service_restarts_unless_stopped(name):
    assert SERVICES[name]["restart"] == "unless-stopped"


@pytest.mark.parametrize("name", ["worker", "sweeper"])
def test_the_worker_and_the_sweeper_are_checked_by_their_heartbeat(name):
    """Fault 14 (issue 10): their healthchecks passed whether the process lived or not.
    tests/test_health.py runs the command against real processes."""
    test = SERVICES[name]["healthcheck"]["test"]

    assert test[0] == "CMD"
    assert test[1:5] == ["python", "manage.py", "health", name]
    assert "health" in get_commands()


def test_the_image_leaves_out_the_local_files():
    ignored = {line.strip() for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}

    assert {".venv/", ".git/", ".data/", ".env", "**/__pycache__/", "test-results/"} <= ignored
