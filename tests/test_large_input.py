"""Large inputs (issue 11, "input limits"): the command line reads one from a file or standard
input, and the run page shows it folded and cut, with a download of the whole."""

import json
import subprocess
import sys

import pytest

from runs.models import Run
from runs.moves import start_run
from tests.agents import TEST
from tests.conftest import PROJECT_DIR, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)
BIG_TEXT = "word " * 40_000  # 200 KB


def start_run_command(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "manage.py", "start_run", "t_echo_agent", *args],
        cwd=PROJECT_DIR, env=subprocess_env(), input=stdin, capture_output=True, text=True, timeout=60,
    )


def test_start_run_reads_a_large_input_from_a_file_or_stdin(operator, tmp_path):
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"text": BIG_TEXT}))
    from_file = start_run_command("--input-file", str(path), "--user", operator.username)
    assert from_file.returncode == 0, from_file.stderr
    from_stdin = start_run_command("--input-file", "-", "--user", operator.username,
                                   stdin=json.dumps({"text": "from stdin"}))
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert sorted(run.input["text"][:10] for run in Run.objects.filter(agent="t_echo_agent")) == ["from stdin", "word word "]


def test_start_run_names_a_missing_input_file(operator, tmp_path):
    missing = start_run_command("--input-file", str(tmp_path / "nope.json"), "--user", operator.username)
    assert missing.returncode == 1
    assert "nope.json: No such file or directory" in missing.stderr


def test_a_large_input_is_folded_and_cut_on_the_run_page_with_a_download(client, viewer):
    run = start_run("t_echo_agent", {"text": BIG_TEXT}, started_by=TEST)
    client.force_login(viewer)
    page = client.get(f"/runs/{run.id}/").content.decode()
    assert len(page) < 100_000  # the 200 KB input is not all on the page
    assert '<details class="large"><summary>Input (' in page
    download = client.get(f"/runs/{run.id}/input.json")
    assert download.status_code == 200
    assert json.loads(b"".join(download)) == {"text": BIG_TEXT}
    assert download["Content-Disposition"] == f'attachment; filename="run-{str(run.id)[:8]}-input.json"'
