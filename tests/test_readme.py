"""The README's walk from `make up` to an agent of one's own, run as written: its example agent
module with a real worker, its start_run and replay commands, and what it says start_run prints
when the demo's run waits for approval."""

import json
import shlex
import subprocess
import sys

import pytest

from runs.roles import OPERATOR
from tests.conftest import PROJECT_DIR, make_user, project_env, subprocess_env

README = (PROJECT_DIR / "README.md").read_text()


def section(title):
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def blocks(text, language):
    """The fenced blocks of `language` ("" for a bare fence), in order."""
    found, current, opened_as = [], None, None
    for line in text.splitlines():
        if line.startswith("```") and current is None:
            current, opened_as = [], line[3:].strip()
        elif line.startswith("```"):
            if opened_as == language:
                found.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return found


def command_line(text, containing):
    """The README's command line that contains `containing`, to run here."""
    line = next(line for block in blocks(text, "sh") for line in block.splitlines() if containing in line)
    words = shlex.split(line.split("#")[0])
    assert words[:2] == [".venv/bin/python", "manage.py"], line
    return [sys.executable, *words[1:]]


@pytest.fixture
def demo_operator(transactional_db):
    """The demo user the README's commands name (`make up`'s seed_demo makes it)."""
    return make_user("operator", OPERATOR)


def run(argv, env):
    return subprocess.run(argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_the_readme_s_own_agent_runs_and_replays_as_it_says(workers, demo_operator, tmp_path):
    own_agent = section("Your own agent")
    package = tmp_path / "myagents"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "greetings.py").write_text(blocks(own_agent, "python")[0])
    setting = next(line for block in blocks(own_agent, "sh") for line in block.splitlines()
                   if line.startswith("AGENT_MODULES="))
    env = project_env(DEBUG="0", AGENT_MODULES=setting.split("=", 1)[1], PYTHONPATH=str(tmp_path))
    workers.env = env
    workers.start()

    started = run(command_line(own_agent, "start_run greeter"), env)

    assert started.returncode == 0, started.stdout + started.stderr
    output = json.loads(started.stdout.splitlines()[-1])
    assert output["greeting"] == "HELLO, ADA!" and output["at"]
    assert "`{\"greeting\": \"HELLO, ADA!\", \"at\": \"...\"}`" in own_agent
    assert any(" shout succeeded" in line for line in started.stdout.splitlines()), started.stdout

    replayed = run(command_line(own_agent, "replay --agent greeter"), env)

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.startswith("same ")


def test_the_demo_s_run_stops_where_the_readme_says_it_does(workers, demo_operator):
    from tools.models import Approval

    agents_and_runs = section("Agents and runs")
    workers.start()

    result = run(command_line(agents_and_runs, "start_run refund_customer"), subprocess_env())

    assert result.returncode == 3, result.stdout + result.stderr
    promised = blocks(agents_and_runs, "")[0].strip()
    approval = Approval.objects.get()
    assert result.stdout.strip().splitlines()[-1] == promised.replace("/approvals/1/", f"/approvals/{approval.id}/")
