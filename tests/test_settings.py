"""Settings reject what they do not understand, naming the variable."""

import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import PROJECT_DIR

LOAD_SETTINGS = "import django; django.setup()"


def load_settings(**env):
    # DOTENV_FILE empty: no .env file is read, the checkout's included.
    base = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "k", "DEBUG": "0", "DOTENV_FILE": ""}
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
    assert f"set SECRET_KEY in {PROJECT_DIR / '.env'} (`make up` writes one" in last_line(result)


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
             "DOTENV_FILE": "",
             "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/shop_agents"},
    )
    assert result.stdout.split() == ["['runs.shop_agents']", "runs.shop_agents"], result.stderr


# Fault 4 (issue 10): the README's commands failed in a second terminal, because only the
# Makefile set the variables. The settings now read a .env file, which `make up` writes once.

def show_settings(*names, **env):
    show = "import django; django.setup(); from django.conf import settings; " + "; ".join(
        f"print(repr(settings.{name}))" for name in names)
    result = subprocess.run(
        [sys.executable, "-c", show], cwd=PROJECT_DIR, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "agentops.settings", **env},
    )
    return result


def test_the_env_file_supplies_what_the_environment_does_not_set(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEBUG=0\nDEMO=1\nSECRET_KEY=from-the-file\nTIME_ZONE=Europe/Paris\n")

    result = show_settings("DEMO", "SECRET_KEY", "TIME_ZONE", DOTENV_FILE=str(dotenv), TIME_ZONE="UTC")

    assert result.stdout.split() == ["True", "'from-the-file'", "'UTC'"], result.stderr  # the environment wins


def test_an_empty_dotenv_file_setting_reads_no_file(tmp_path):
    """What `make test` and runs.processes.project_env do, so a developer's .env changes no test."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEMO=1\n")

    assert show_settings("DEMO", DOTENV_FILE="", SECRET_KEY="k").stdout.split() == ["False"]
    assert show_settings("DEMO", DOTENV_FILE=str(dotenv), SECRET_KEY="k").stdout.split() == ["True"]


def test_the_processes_the_tests_start_read_no_env_file():
    from runs.processes import project_env

    assert project_env()["DOTENV_FILE"] == ""


def test_a_bad_value_in_the_env_file_names_the_file_to_edit(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEBUG=maybe\n")

    result = load_settings(DOTENV_FILE=str(dotenv), DEBUG=None)

    assert result.returncode != 0
    assert last_line(result).endswith(f"DEBUG='maybe' is not understood (use one of 1, true, yes, on, 0, false, "
                                      f"no, off): edit DEBUG in {dotenv}")


def test_a_missing_secret_key_names_the_env_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEBUG=0\n")

    result = load_settings(DOTENV_FILE=str(dotenv), DEBUG=None, SECRET_KEY=None)

    assert result.returncode != 0
    assert last_line(result).endswith(f"set SECRET_KEY in {dotenv} (`make up` writes one; .env.example lists every variable)")


def test_make_up_writes_a_local_env_once_and_never_overwrites_it(tmp_path):
    dotenv = tmp_path / ".env"
    write = [sys.executable, "-m", "agentops.localenv", str(dotenv)]

    first = subprocess.run(write, cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    written = dotenv.read_text()
    dotenv.write_text(written + "DEMO=0\n")
    again = subprocess.run(write, cwd=PROJECT_DIR, capture_output=True, text=True, check=True)

    assert first.stdout.startswith(f"Wrote {dotenv}") and again.stdout.startswith(f"Using {dotenv} as it is")
    assert dotenv.read_text() == written + "DEMO=0\n"
    lines = dict(line.split("=", 1) for line in written.splitlines() if line and not line.startswith("#"))
    assert lines["DEBUG"] == "1" and lines["DEMO"] == "1" and len(lines["SECRET_KEY"]) >= 50
    assert set(lines) <= settings.ENVIRONMENT_VARIABLES
    assert "local-env" in (PROJECT_DIR / "Makefile").read_text().split("\nup:")[1].splitlines()[0]


def test_env_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", ".env"], cwd=PROJECT_DIR, capture_output=True, text=True)

    assert ignored.stdout.strip() == ".env"


@pytest.mark.django_db(transaction=True)
def test_the_readme_command_works_in_a_second_terminal_with_the_env_make_up_wrote(tmp_path, operator):
    """A shell with no variables set: only the .env that the `make up` step wrote (pointed at
    the test database, as a developer's own database would be)."""
    from runs.models import Run
    from runs.processes import database_url

    dotenv = tmp_path / ".env"
    subprocess.run([sys.executable, "-m", "agentops.localenv", str(dotenv)], cwd=PROJECT_DIR, check=True,
                   capture_output=True)
    with dotenv.open("a") as file:
        file.write(f"DATABASE_URL={database_url()}\nREDIS_URL={settings.REDIS_URL}\n")

    result = subprocess.run(
        [sys.executable, "manage.py", "start_run", "refund_customer", "--input", '{"order_id": "A-1001"}',
         "--user", operator.username],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DOTENV_FILE": str(dotenv)},
    )

    assert result.returncode == 0, result.stderr
    run = Run.objects.get()
    assert result.stdout.strip() == f"run {run.id} queued"
    assert run.started_by == "user:otto"


def test_a_command_in_a_shell_without_settings_says_what_to_set_in_one_line():
    """What the README's second-terminal command printed before: a traceback, then the error."""
    result = subprocess.run(
        [sys.executable, "manage.py", "start_run", "refund_customer"], cwd=PROJECT_DIR, capture_output=True,
        text=True, env={"PATH": "/usr/bin:/bin", "DOTENV_FILE": ""},
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "agentops is not configured: SECRET_KEY is not set and DEBUG is off: give it a long random string, "
        f"or turn DEBUG on for local use: set SECRET_KEY in {PROJECT_DIR / '.env'} (`make up` writes one; "
        ".env.example lists every variable)"
    )


@pytest.mark.parametrize("name, value, says", [
    ("LOGIN_LOCKOUT_BY", "ip", "use username, address, or both"),
    ("LOGIN_LOCKOUT_MINUTES", "0", "must be at least 1"),
    ("RUN_INPUT_MAX_BYTES", "0", "must be at least 1"),
    ("RUN_LOST_LEASES_LIMIT", "0", "must be at least 1"),
])
def test_the_hardening_settings_refuse_what_they_cannot_enforce(name, value, says):
    result = load_settings(**{name: value})

    assert result.returncode != 0
    assert name in last_line(result) and says in last_line(result)


def test_a_lockout_by_username_only_leaves_the_address_alone():
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SETTINGS + "; from django.conf import settings; print(settings.AXES_LOCKOUT_PARAMETERS)"],
        cwd=PROJECT_DIR, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "SECRET_KEY": "k", "DEBUG": "0", "DOTENV_FILE": "",
             "LOGIN_LOCKOUT_BY": "username", "DJANGO_SETTINGS_MODULE": "agentops.settings"},
    )
    assert result.stdout.strip() == "['username']", result.stderr
