"""Starting a run: from Python and from `manage.py start_run`; bad input is refused whole."""

import json
import subprocess
import sys
import time

import pytest

from runs.agents import InvalidInput, UnknownAgent
from runs.moves import InvalidIdempotencyKey, start_run
from runs.models import Run, RunEvent
from tests.agents import TEST
from tests.conftest import PROJECT_DIR, subprocess_env


def nothing_was_written():
    return not Run.objects.exists() and not RunEvent.objects.exists()


@pytest.mark.django_db
def test_an_unknown_agent_is_refused_by_name():
    with pytest.raises(UnknownAgent, match=r"unknown agent 'no_such_agent' \(known agents: .*refund_customer"):
        start_run("no_such_agent", {}, started_by=TEST)
    assert nothing_was_written()


@pytest.mark.django_db
def test_input_that_fails_the_schema_is_refused_naming_the_field():
    with pytest.raises(InvalidInput, match="input for agent 'refund_customer' is invalid: order_id: Field required"):
        start_run("refund_customer", {"think_seconds": 1}, started_by=TEST)
    with pytest.raises(InvalidInput, match="think_seconds: Input should be greater than or equal to 0"):
        start_run("refund_customer", {"order_id": "A-1001", "think_seconds": -1}, started_by=TEST)
    assert nothing_was_written()


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", " spaced key", "-leading-dash", "x" * 201, "key/with/slash", "ünïcode"])
def test_a_malformed_idempotency_key_is_refused(key):
    with pytest.raises(InvalidIdempotencyKey, match="is malformed"):
        start_run("refund_customer", {"order_id": "A-1001"}, started_by=TEST, idempotency_key=key)
    assert nothing_was_written()


@pytest.mark.django_db
def test_the_same_key_returns_the_same_run():
    first = start_run("refund_customer", {"order_id": "A-1001"}, started_by=TEST, idempotency_key="order-A-1001")
    again = start_run("refund_customer", {"order_id": "A-1001"}, started_by=TEST, idempotency_key="order-A-1001")

    assert again.id == first.id
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_the_same_key_with_another_input_is_refused():
    start_run("refund_customer", {"order_id": "A-1001"}, started_by=TEST, idempotency_key="order-1")

    with pytest.raises(InvalidIdempotencyKey, match="already started run .* with a different input"):
        start_run("refund_customer", {"order_id": "A-1002"}, started_by=TEST, idempotency_key="order-1")
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_a_new_run_is_queued_with_its_creation_recorded():
    run = start_run("refund_customer", {"order_id": "A-1001"}, started_by=TEST)

    assert run.status == "queued"
    assert run.input == {"order_id": "A-1001", "think_seconds": 3.0}  # defaults filled in
    event = RunEvent.objects.get(run=run)
    assert (event.kind, event.to_status, event.actor) == ("created", "queued", "system:test")


def manage(*args, env=None):
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env or subprocess_env(),
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "CommandError: unknown agent 'nope'"),
        (["refund_customer", "--input", "{not json"], "CommandError: --input is not JSON"),
        (["refund_customer", "--input", '{"order_id": 5}'], "order_id: Input should be a valid string"),
        (["refund_customer", "--input", '{"order_id": "A-1"}', "--idempotency-key", "bad key"], "is malformed"),
    ],
)
def test_the_command_refuses_bad_input_with_one_clear_line(args, message, operator):
    result = manage("start_run", *args, "--user", operator.username)

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not Run.objects.exists()


def test_the_command_starts_a_run_and_waits_for_it(workers, operator):
    from tools.models import Tool, ToolPermission
    from tools.sync import sync_tools

    sync_tools()  # send_email is irreversible: allowed here, so the run does not wait for a person
    ToolPermission.objects.create(tool=Tool.objects.get(name="send_email"), rule="allow")
    workers.start()

    result = manage("start_run", "refund_customer", "--input", '{"order_id": "A-1002", "think_seconds": 0.5}',
                    "--idempotency-key", "cli-test-1", "--wait", "--timeout", "60", "--user", operator.username)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    run = Run.objects.get(idempotency_key="cli-test-1")
    assert lines[0] == f"run {run.id} queued"
    # Progress as it happens: each step as it is journaled, then the end.
    steps = [line.split(":")[0].strip() for line in lines if line.startswith("  step ")]
    assert steps == [f"step {n}" for n in range(1, len(steps) + 1)] and len(steps) >= 4, lines
    assert f"run {run.id} succeeded" in lines
    assert json.loads(lines[-1]) == run.output
    assert run.started_by == f"user:{operator.username}"


def test_waiting_for_approval_prints_where_to_act_and_exits_with_its_own_code(workers, operator):
    """Fault 5 (issue 10): --wait printed nothing for 300 s while the run waited for a person."""
    from tools.models import Approval

    workers.start()
    started = time.monotonic()

    result = manage("start_run", "refund_customer", "--input", '{"order_id": "A-1002", "think_seconds": 0.5}',
                    "--wait", "--timeout", "60", "--user", operator.username,
                    env=subprocess_env(SITE_URL="https://agentops.example.com"))

    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - started < 30  # it stops when the run starts waiting, not at --timeout
    approval = Approval.objects.get(status="pending")
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == (
        f"waiting for a person to approve send_email (step {approval.seq}): approve or deny at "
        f"https://agentops.example.com/tools/approvals/{approval.id}/"
    )
    assert f"run {approval.run_id} waiting (approval)" in lines
    assert any(line.startswith("  step 1: ") for line in lines), lines
