"""Operator controls for retries, budgets and loops: the run page, the runs list, the commands.

Runs are driven in this process as tests/test_retries.py drives them (its agents and tools are in
tests/agents.py; `jitter` fixes the backoff's random share). Every action is a POST with CSRF,
refused to a viewer, and audited in the user's name.
"""

import re
import subprocess
import sys
from datetime import timedelta
from html import unescape

import pytest
from django.core.management import CommandError, call_command
from django.http import QueryDict
from django.test import Client
from django.utils import timezone

from runs import moves
from runs.engine import advance_run
from runs.listing import RunListing
from runs.models import AuditEntry, JournalEntry, Run
from runs.moments import moment_text
from runs.moves import start_run
from runs.waits import WaitFor
from tests.agents import CALLS, FAILS, SLOW, TEST
from tests.conftest import PROJECT_DIR, messages_of, subprocess_env
from tests.test_live_consumer import first_push

pytestmark = pytest.mark.django_db(transaction=True)


def advanced(agent, input, **kwargs):
    run = start_run(agent, input, started_by=TEST, **kwargs)
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def go_on(run):
    advance_run(run.id)
    return Run.objects.get(id=run.id)


def out_of_attempts(agent="r_calls"):
    """A run parked because step 1 (r_read) failed at each of its 4 attempts."""
    FAILS["r_read"] = 10
    run = advanced(agent, {"tool": "r_read"})
    assert (run.status, run.parked_by) == ("needs_attention", "retries")
    FAILS["r_read"] = 0  # the service is back
    return run


def page(client, run, query=""):
    response = client.get(f"/runs/{run.id}/{query}")
    assert response.status_code == 200
    return response.content.decode()


def section(html, id):
    return html.split(f'id="{id}"')[1].split("</section>")[0]


def said(client, url, data=None):
    """The messages a POST leaves; a page then shows them, so the next POST's stand alone."""
    messages = messages_of(client.post(url, data or {}))
    client.get("/")
    return messages


def text(html):
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


# The run page ---------------------------------------------------------------------------------


def test_a_step_out_of_attempts_shows_each_attempt_and_an_operator_retries_it_now(client, operator, jitter):
    jitter["value"] = 0.001
    run = out_of_attempts()
    client.force_login(operator)

    html = page(client, run)
    card = text(section(html, "run-retry"))
    assert "Step 1 ran out of attempts" in card
    assert card.count("TransientError: r_read is having a bad moment") == 4
    assert "attempt 1" in card and "attempt 4" in card
    assert "out of attempts: the most its retry policy allows" in card
    step = section(html, "steps")
    assert 'class="step step-out_of_attempts"' in step and "out of attempts" in text(step)
    assert "gave up after 4 attempts" in text(section(html, "run-header"))  # the parked reason
    assert "parked: out of retries" in text(section(html, "run-header"))
    assert "Retry now" in card and "Fail step" in card
    assert "a fresh round of attempts" in section(html, "run-retry")  # the confirmation says what follows

    response = client.post(f"/runs/{run.id}/steps/1/retry/", {"reason": "the vendor is back"})

    assert response.status_code == 302
    assert messages_of(response) == ["Step 1 gets a fresh round of attempts, starting now; the run is queued."]
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id, entry.reason) == ("otto", "retry_step", run.id, "the vendor is back")
    assert entry.details == {"seq": 1, "after_attempt": 4}
    assert 'class="step step-will_retry"' in page(client, Run.objects.get(id=run.id))
    assert go_on(run).status == "succeeded" and CALLS["r_read"] == 5


def test_a_viewer_sees_the_attempts_and_the_budget_but_no_controls_and_is_refused(client, viewer, jitter):
    jitter["value"] = 0.001
    run = out_of_attempts()
    client.force_login(viewer)

    html = page(client, run)
    assert "Step 1 ran out of attempts" in html and "attempt 4" in html
    assert 'id="budget-retries"' in html
    assert "Retry now" not in html and "Fail step" not in html and "Raise budget" not in html

    assert client.post(f"/runs/{run.id}/steps/1/retry/").status_code == 403
    assert client.post(f"/runs/{run.id}/steps/1/resolve/", {"decision": "fail", "reason": "x"}).status_code == 403
    assert client.post(f"/runs/{run.id}/budget/", {"limit_retries": "100"}).status_code == 403
    assert not AuditEntry.objects.exists()
    assert Run.objects.get(id=run.id).status == "needs_attention"


def test_the_controls_need_post_and_csrf(operator, jitter):
    jitter["value"] = 0.001
    run = out_of_attempts()
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)

    assert client.get(f"/runs/{run.id}/steps/1/retry/").status_code == 405
    assert client.get(f"/runs/{run.id}/budget/").status_code == 405
    assert client.post(f"/runs/{run.id}/steps/1/retry/").status_code == 403
    assert client.post(f"/runs/{run.id}/budget/", {"limit_retries": "100"}).status_code == 403
    assert not AuditEntry.objects.exists()

    html = client.get(f"/runs/{run.id}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', section(html, "run-retry")).group(1)
    response = client.post(f"/runs/{run.id}/steps/1/retry/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and AuditEntry.objects.get().action == "retry_step"


def test_an_operator_fails_a_step_out_of_attempts_and_the_agent_gets_the_reason(client, operator, jitter):
    jitter["value"] = 0.001
    run = out_of_attempts("r_adapts")
    client.force_login(operator)

    assert said(client, f"/runs/{run.id}/steps/1/resolve/", {"decision": "fail", "reason": " "}) == ["Not done: failing a step needs a reason: the agent receives it as the tool's error."]
    assert not AuditEntry.objects.exists()

    response = client.post(f"/runs/{run.id}/steps/1/resolve/", {"decision": "fail", "reason": "the vendor is gone"})

    assert messages_of(response) == ["Step 1 failed; the agent receives your reason as the tool's error."]
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.details) == ("otto", "resolve_fail", {"seq": 1, "result": None})
    run = go_on(run)
    assert run.output == "adapted: failed_by_operator: failed by operator: the vendor is gone"
    assert CALLS["r_read"] == 4


def test_a_step_waiting_out_its_backoff_says_when_and_retry_now_skips_the_wait(client, operator, jitter):
    FAILS["r_read"] = 1
    run = advanced("r_calls", {"tool": "r_read"})
    # 0.75 of min(5, 2 * 2**0) = 1.5 s: over a second, so the run waits without its worker.
    assert (run.status, run.wait_kind, run.wait_ref) == ("waiting", "retry", "1")
    client.force_login(operator)

    html = page(client, run)
    card = text(section(html, "run-retry"))
    assert "Step 1 waits to be tried again" in card
    assert "backoff 1.5 s; next attempt due" in card
    assert moment_text(run.wake_at) in card  # the absolute time beside the relative one
    assert 'class="step step-will_retry"' in section(html, "steps")
    assert "Fail step" not in card  # only a step out of attempts is failed by hand
    assert "wait-backoff" in section(html, "run-waterfall")
    assert "waits out its backoff" not in card and "instead of waiting out its backoff" in section(html, "run-retry")

    assert said(client, f"/runs/{run.id}/steps/1/retry/", {"reason": ""}) == [
        "Step 1 is tried again now, without waiting; the run is queued."]
    assert AuditEntry.objects.get().username == "otto"
    assert go_on(run).status == "succeeded" and CALLS["r_read"] == 2
    [refused] = said(client, f"/runs/{run.id}/steps/1/retry/")
    assert refused == f"Not done: step 1 of run {run.id} is not waiting to be tried again (succeeded)."
    html = page(client, Run.objects.get(id=run.id))
    assert 'id="run-retry"' in html and "Retry now" not in html


def test_a_step_its_breaker_holds_before_its_first_call_can_be_retried_now(client, operator):
    # What the recorder does when its tool's breaker is open at a step's first call (the real
    # breaker is tools/breakers.py): the run waits, with no journal row for the step.
    run = start_run("r_calls", {"tool": "r_read"}, started_by=TEST)
    lease = moves.claim(run.id, "test-worker")
    wake_at = timezone.now() + timedelta(seconds=30)
    moves.suspend(lease, WaitFor.retry(1, wake_at, "the breaker of 'r_read' is open"), agent="r_calls")
    client.force_login(operator)

    html = page(client, run)
    card = text(section(html, "run-retry"))
    assert "Step 1 waits for its tool's breaker" in card and "its first call waits until" in card
    assert moment_text(wake_at) in card
    assert "#1 breaker open" in text(section(html, "run-waterfall"))
    assert "wait-breaker" in section(html, "run-waterfall")
    assert "for its tool's breaker? The call is made at once" in section(html, "run-retry")

    assert said(client, f"/runs/{run.id}/steps/1/retry/") == [
        "Step 1 is tried again now, without waiting; the run is queued."]
    assert AuditEntry.objects.get().details == {"seq": 1, "after_attempt": 0}
    assert go_on(run).status == "succeeded" and CALLS["r_read"] == 1


def test_a_timed_out_attempt_says_so(client, viewer, jitter):
    jitter["value"] = 0.01
    SLOW["r_read"] = 30
    run = advanced("r_calls", {"tool": "r_read"})
    assert run.status == "succeeded"
    client.force_login(viewer)

    step = text(section(page(client, run), "steps"))
    assert "attempt 1 timed out: the call took longer than its timeout of 1 s" in step
    assert "2 attempts" in step


def test_the_waterfall_draws_a_backoff_in_the_step_lane(client, viewer, jitter):
    FAILS["r_read"] = 1
    run = advanced("r_calls", {"tool": "r_read"})
    run = go_on(run)  # woken early: it waits again, until its time
    client.force_login(viewer)

    waterfall = section(page(client, run), "run-waterfall")
    lane = waterfall.split('<a href="#step-1">#1 tool r_read</a>')[1].split('class="wf-row')[0]
    assert 'class="wf-bar wait wait-backoff wf-open"' in lane
    assert "backoff after attempt 1: 1.5 s" in lane
    assert "backoff until" in lane


def test_a_run_over_its_budget_shows_the_bar_and_raising_it_goes_on(client, operator):
    run = advanced("r_budgeted", {"tool": "r_read", "times": 5})
    assert run.parked_by == "budget"
    client.force_login(operator)

    html = page(client, run)
    header = text(section(html, "run-header"))
    assert "budget exceeded: tool calls limit 3, spent 3" in header and "parked: over budget" in header
    row = html.split('id="budget-tool_calls"')[1].split("</tr>")[0]
    assert 'budget-over' in html.split('id="budget-tool_calls"')[1][:40]
    assert "at the limit" in row and 'data-place="width:100.00"' in row
    assert "goes on at once" in section(html, "run-budget-form")

    response = client.post(f"/runs/{run.id}/budget/", {"limit_tool_calls": "10", "limit_retries": "", "reason": "worth it"})

    assert messages_of(response) == ["Budget raised (tool_calls 10); the run was parked by its budget and goes on now."]
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.reason) == ("otto", "raise_budget", "worth it")
    assert (entry.details["before"]["tool_calls"], entry.details["after"]["tool_calls"]) == (3, 10)
    assert Run.objects.get(id=run.id).status == "queued"
    run = go_on(run)
    assert run.status == "succeeded" and len(run.output) == 5


def test_a_budget_near_its_limit_is_amber_and_retry_spend_is_shown(client, viewer, jitter):
    jitter["value"] = 0.1  # 0.2 s: the worker backs off itself
    FAILS["r_read"] = 1
    run = advanced("r_budgeted", {"tool": "r_read", "times": 4}, budget={"tool_calls": 6, "retries": 5})
    assert run.status == "succeeded"
    client.force_login(viewer)

    html = page(client, run)
    assert 'class="budget-row budget-near"' in html.split('id="budget-tool_calls"')[1][:60]  # 5 of 6
    assert 'class="budget-row"' in html.split('id="budget-retries"')[1][:60]  # 1 of 5
    assert "Spent on retries: 1 retry, 200 ms waited on backoff, 0 tokens" in text(section(html, "run-budget"))


def test_raising_a_budget_refuses_what_is_not_a_raise_and_changes_nothing(client, operator):
    run = advanced("r_budgeted", {"tool": "r_read", "times": 5})
    client.force_login(operator)

    refusals = [
        ({"limit_tool_calls": "many"}, "Not done: budget tool_calls must be a whole number, or none for no limit, not 'many'."),
        ({"limit_cost_usd": "inf"}, "Not done: budget cost_usd must be a number, or none for no limit, not 'inf'."),
        ({"limit_tool_calls": "2"}, "Not done: budget tool_calls can only be raised: it is 3, not 2."),
        ({"limit_repeats": "1"}, "Not done: the new budget: budget repeats must be at least 2, not 1."),
        ({}, "Not done: say which budget to raise, and to what."),
    ]
    for data, message in refusals:
        assert said(client, f"/runs/{run.id}/budget/", data) == [message], data
    assert not AuditEntry.objects.exists() and Run.objects.get(id=run.id).status == "needs_attention"

    response = client.post(f"/runs/{run.id}/budget/", {"unlimited": ["tool_calls", "cost_usd"], "limit_tool_calls": "7"})
    assert messages_of(response)[0].startswith("Budget raised (tool_calls unlimited, cost_usd unlimited)")
    assert Run.objects.get(id=run.id).budget["tool_calls"] is None


def test_a_loop_marks_the_repeated_steps_and_raising_its_limit_goes_on(client, operator):
    run = advanced("r_calls", {"tool": "r_read", "times": 5})
    assert run.parked_by == "loop"
    client.force_login(operator)

    html = page(client, run)
    steps = section(html, "steps")
    assert steps.count("repeated call</span>") == 2
    assert 'class="step step-succeeded step-repeated"' in steps
    assert "a loop: the run is parked" in html.split('id="budget-repeats"')[1].split("</tr>")[0]
    assert "unlimited" in text(html.split('id="budget-llm_tokens"')[1].split("</tr>")[0])  # r_calls sets none
    assert "loop" in text(section(html, "run-header")) and "steps 1, 2, 3" in text(section(html, "run-header"))

    response = client.post(f"/runs/{run.id}/budget/", {"limit_repeats": "10", "reason": "it polls on purpose"})

    assert messages_of(response) == ["Budget raised (repeats 10); the run was parked by its loop and goes on now."]
    assert go_on(run).status == "succeeded" and CALLS["r_read"] == 5
    assert "repeated call" not in section(page(client, run), "steps")


def test_the_live_page_unmarks_the_loop_once_its_limit_is_raised(client, operator):
    run = advanced("r_calls", {"tool": "r_read", "times": 5})
    client.force_login(operator)
    html = page(client, run)
    assert "repeated call" in section(html, "steps")
    path = unescape(re.search(r'ws-connect="(/ws/runs/[^"]+)"', html).group(1))
    said(client, f"/runs/{run.id}/budget/", {"limit_repeats": "10"})  # queued; its rows are the same

    push = first_push(path, operator)

    assert 'id="step-1"' in push and "repeated call</span>" not in push  # each step resent, unmarked
    assert 'id="run-budget-form"' in push and 'id="run-retry"' in push  # the controls changed
    assert "parked:" not in section(push, "run-header")


# The runs list --------------------------------------------------------------------------------


def test_the_runs_list_filters_runs_parked_by_each_kind(client, viewer, jitter):
    jitter["value"] = 0.001
    budget = advanced("r_budgeted", {"tool": "r_read", "times": 5})
    loop = advanced("r_calls", {"tool": "r_read", "times": 5})
    retries = out_of_attempts()
    plain = advanced("r_calls", {"tool": "r_read"})
    client.force_login(viewer)

    def listed(query):
        html = client.get(f"/?{query}").content.decode()
        return {run.id for run in (budget, loop, retries, plain) if f'id="run-{run.id}"' in html}, html

    assert listed("parked=budget")[0] == {budget.id}
    assert listed("parked=loop")[0] == {loop.id}
    assert listed("parked=retries")[0] == {retries.id}
    everything, html = listed("")
    assert everything == {budget.id, loop.id, retries.id, plain.id}
    row = html.split(f'id="run-{budget.id}"')[1].split("</tr>")[0]
    assert "parked: over budget" in row
    assert "parked:" not in html.split(f'id="run-{plain.id}"')[1].split("</tr>")[0]
    counts = text(section(html, "run-counts"))
    assert "parked: over budget 1" in counts and "parked: loop 1" in counts and "parked: out of retries 1" in counts
    assert '&amp;parked=loop"' in section(html, "run-counts")

    _, html = listed("parked=budget")
    assert "ws-connect=\"/ws/runs/?parked=budget\"" in html  # the live socket keeps the filter
    _, html = listed("parked=bored")
    assert "Nothing parks a run by &#x27;bored&#x27; (only budget, loop, retries)." in html


def test_the_live_list_keeps_the_parked_filter():
    budget = advanced("r_budgeted", {"tool": "r_read", "times": 5})
    plain = advanced("r_calls", {"tool": "r_read"})
    listing = RunListing.from_params(QueryDict("parked=budget"))

    assert listing.one(budget.id) is not None and listing.one(plain.id) is None
    assert listing.querystring() == "parked=budget"


def test_a_run_waiting_to_retry_says_so_in_the_list(client, viewer, jitter):
    FAILS["r_read"] = 1
    run = advanced("r_calls", {"tool": "r_read"})
    client.force_login(viewer)

    row = client.get("/").content.decode().split(f'id="run-{run.id}"')[1].split("</tr>")[0]
    assert "to try step 1 again, " in text(row)


# The command line -----------------------------------------------------------------------------


def manage(*args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def test_retry_step_from_the_command_line_is_audited_in_the_users_name(operator, jitter, capsys):
    jitter["value"] = 0.001
    run = out_of_attempts()

    call_command("retry_step", str(run.id)[:8], "1", "--reason", "vendor back", "--user", "otto")

    assert capsys.readouterr().out.strip() == f"run {run.id} step 1: retry now; the run is queued"
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.reason) == ("otto", "retry_step", "vendor back")
    assert go_on(run).status == "succeeded"
    with pytest.raises(CommandError, match=r"^step 1 of run .* is not waiting to be tried again \(succeeded\)$"):
        call_command("retry_step", str(run.id), "1", "--user", "otto")


def test_raise_budget_from_the_command_line(operator, viewer, capsys):
    run = advanced("r_budgeted", {"tool": "r_read", "times": 5})

    call_command("raise_budget", str(run.id), "--set", "tool_calls=10", "--set", "llm_tokens=none",
                 "--reason", "worth it", "--user", "otto")

    assert capsys.readouterr().out.strip() == (
        f"run {run.id} budget: tool_calls 10, llm_tokens unlimited; it was parked by its budget and goes on; "
        "the run is queued")
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.details["after"]["llm_tokens"]) == ("otto", "raise_budget", None)
    for args, message in [
        (["--set", "tool_calls"], "--set tool_calls: write BUDGET=LIMIT"),
        (["--set", "tokens=5"], "there is no budget 'tokens'"),
        (["--set", "tool_calls=2"], "budget tool_calls can only be raised: it is 10, not 2"),
        ([], "say which budget to raise"),
    ]:
        with pytest.raises(CommandError, match=re.escape(message)):
            call_command("raise_budget", str(run.id), *args, "--user", "otto")
    with pytest.raises(CommandError, match="user 'vera' may not raise a run's budget: that needs the operator role"):
        call_command("raise_budget", str(run.id), "--set", "retries=100", "--user", "vera")
    assert AuditEntry.objects.count() == 1


def test_start_run_takes_a_budget_and_audits_it(operator, capsys):
    call_command("start_run", "r_budgeted", "--input", '{"tool": "r_read", "times": 5}',
                 "--budget", '{"tool_calls": 10, "llm_tokens": null}', "--user", "otto")

    run = Run.objects.get()
    assert capsys.readouterr().out.startswith(f"run {run.id} queued")
    assert (run.budget["tool_calls"], run.budget["llm_tokens"], run.budget["retries"]) == (10, None, 1)
    assert AuditEntry.objects.get().details["budget"] == {"tool_calls": 10, "llm_tokens": None}
    assert go_on(run).status == "succeeded"


@pytest.mark.parametrize("args, message", [
    (["start_run", "r_budgeted", "--budget", '{"tool_calls": "many"}'],
     "CommandError: this start: budget tool_calls must be a whole number or null, not 'many'"),
    (["start_run", "r_budgeted", "--budget", "{retries: 5}"], "CommandError: --budget is not JSON"),
    (["retry_step", "0000", "1"], "CommandError: there is no run '0000'"),
    (["raise_budget", "0000", "--set", "retries=x"],
     "CommandError: budget retries must be a whole number, or none for no limit, not 'x'"),
])
def test_each_refusal_is_one_clear_line_and_a_failing_exit(args, message, operator):
    result = manage(*args, "--user", "otto")

    assert result.returncode == 1
    assert result.stderr.strip() == message or result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not JournalEntry.objects.exists() and not AuditEntry.objects.exists()
