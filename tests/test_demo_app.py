"""The demo (tools.demo) loads only with DEMO=1: its app, its agents, the commands that need it."""

import json
import subprocess
import sys

import pytest

from runs.models import Run
from tests.conftest import PROJECT_DIR, project_env

SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
from runs.agents import AGENTS
print(json.dumps({"apps": settings.INSTALLED_APPS, "modules": settings.AGENT_MODULES, "agents": sorted(AGENTS)}))
"""


def run_python(args, **env):
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "k", "DEBUG": "0", "DJANGO_SETTINGS_MODULE": "agentops.settings"}
    base.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=PROJECT_DIR, capture_output=True, text=True,
        env={k: v for k, v in base.items() if v is not None},
    )


def loaded(**env):
    result = run_python(["-c", SHOW_SETTINGS], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("demo", [None, "0"])
def test_with_the_demo_off_neither_its_app_nor_its_agents_load(demo):
    settings = loaded(DEMO=demo)

    assert "tools.demo" not in settings["apps"]
    assert settings["modules"] == []
    assert not {"refund_customer", "chaos", "bench_reads"} & set(settings["agents"])


def test_with_the_demo_on_its_app_and_its_agents_load():
    settings = loaded(DEMO="1")

    assert "tools.demo" in settings["apps"]
    assert settings["modules"] == ["tools.demo.agents", "tools.demo.proving"]
    assert {"refund_customer", "refund_batch", "chaos", "bench_reads"} <= set(settings["agents"])


def test_a_demo_module_in_agent_modules_with_the_demo_off_is_refused_naming_both_settings():
    result = run_python(["-c", SHOW_SETTINGS], DEMO="0", AGENT_MODULES="tools.demo.proving")

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured: AGENT_MODULES names 'tools.demo.proving'" in last
    assert "DEMO is off" in last


@pytest.mark.parametrize("old_name", ["tools.demo", "tools.proving"])
def test_the_old_module_names_are_refused_with_the_new_ones(old_name):
    result = run_python(["-c", SHOW_SETTINGS], DEMO="1", AGENT_MODULES=old_name)

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"AGENT_MODULES names {old_name!r}, which has moved" in last
    assert "tools.demo.agents,tools.demo.proving" in last and "DEMO=1" in last


@pytest.mark.parametrize("command", ["chaos", "bench_journal", "screenshots", "storm"])
def test_a_command_that_needs_the_demo_says_so_in_one_line(command):
    result = run_python(["manage.py", command], DEMO="0")

    assert result.returncode == 1
    assert result.stderr.strip() == f"CommandError: {command} needs the demo, which is not loaded: set DEMO=1"


def test_seed_demo_with_the_demo_off_makes_the_users_and_no_runs(transactional_db):
    result = subprocess.run(
        [sys.executable, "manage.py", "seed_demo"], cwd=PROJECT_DIR, capture_output=True, text=True,
        env=project_env(DEBUG="1", DEMO="0", AGENT_MODULES=""),
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("Demo users")
    assert lines[-1] == "The demo is not loaded (DEMO is off): no demo runs."
    assert not Run.objects.exists()


def test_seed_demo_with_your_own_agent_modules_makes_the_users_and_no_runs(transactional_db):
    """Fault found by a new user: AGENT_MODULES set to their own module made `make up` crash in
    seed_demo (UnknownAgent refund_customer), after it had reset the passwords."""
    result = subprocess.run(
        [sys.executable, "manage.py", "seed_demo"], cwd=PROJECT_DIR, capture_output=True, text=True,
        env=project_env(DEBUG="1", DEMO="1", AGENT_MODULES="tests.agents"),
    )

    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("The demo agents are not loaded (refund_batch, refund_customer): AGENT_MODULES")
    assert not Run.objects.exists()


def test_with_the_demo_on_a_command_that_needs_it_goes_on():
    result = run_python(["manage.py", "bench_journal", "--steps", "0"], DEMO="1")

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "CommandError: --steps and --rounds must be at least 1, --throughput-runs at least 0"
    )


def test_bench_pages_seeds_and_measures_every_page_at_a_small_size():
    """Its seeding is raw SQL: a column added to runs without a database default broke it
    (finished_steps_at_loss) without any test noticing."""
    result = run_python(["manage.py", "bench_pages", "--runs", "100", "--journal-rows", "200",
                         "--big-run-steps", "20", "--samples", "1"], DEMO="1")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("bench_pages: list_p95_ms="), result.stdout
