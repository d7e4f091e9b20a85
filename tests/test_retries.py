"""Retries, timeouts, budgets and loops, in this process against the real database.

Time is controlled: `clock` moves django.utils.timezone.now (which the recorder and the waits
read) and `jitter` fixes the backoff's random share, so every delay is known in advance (both
fixtures are in tests/conftest.py).
"""

from datetime import timedelta

import pytest

from runs import retries
from runs.actors import Actor
from runs.engine import advance_run, wake_run
from runs.models import AuditEntry, JournalEntry, Run
from runs.moves import start_run
from runs.retries import CallNotMade, InvalidRetryPolicy, RetryPolicy
from runs.services import ActionRefused, Resolution, raise_budget, resolve_step, retry_step
from tests.agents import CALLS, FAILS, FAILURE, KEYS, SLOW, TEST, Value
from tools.registry import tool

pytestmark = pytest.mark.django_db(transaction=True)
OPERATOR = Actor("user", "olga")


def start(agent, input, **kwargs):
    return start_run(agent, input, started_by=TEST, **kwargs)


def advance(run):
    advance_run(run.id)
    run.refresh_from_db()
    return run


def attempts(run, seq=1):
    return list(JournalEntry.objects.filter(run=run, seq=seq, phase="outcome").order_by("attempt"))


def test_backoff_delays_follow_the_policy_and_each_attempt_is_journaled(jitter, clock):
    FAILS["r_read"] = 3
    run = advance(start("r_calls", {"tool": "r_read"}))

    # Attempt 1 failed: 0.75 of min(5, 2 * 2**0) = 1.5 s, over a second, so the run waits
    # without its worker, until the time its journal row names.
    assert (run.status, run.wait_kind, run.wait_ref) == ("waiting", "retry", "1")
    [first] = attempts(run)
    assert first.status == "retry" and first.error["delay_s"] == 1.5 and first.error["transient"]
    assert run.wake_at == clock.now + timedelta(seconds=1.5)
    assert "backing off 1.5 s" in run.status_reason

    assert wake_run(run.id) == "not due"  # the scheduled job came early: nothing moves
    clock.advance(1.5)
    assert wake_run(run.id) == "woken"
    run = advance(Run.objects.get(id=run.id))
    clock.advance(3.0)
    wake_run(run.id)
    run = advance(Run.objects.get(id=run.id))
    clock.advance(3.75)
    wake_run(run.id)
    run = advance(Run.objects.get(id=run.id))

    assert run.status == "succeeded"
    rows = attempts(run)
    # Ceilings 2, 4 and then the cap of 5; each delay is 0.75 of its ceiling.
    assert [(r.attempt, r.status, (r.error or {}).get("delay_s")) for r in rows] == [
        (1, "retry", 1.5), (2, "retry", 3.0), (3, "retry", 3.75), (4, "succeeded", None)]
    assert len({r.idempotency_key for r in rows}) == 1
    assert CALLS["r_read"] == 4


def test_a_short_backoff_retries_in_the_worker(jitter):
    jitter["value"] = 0.1  # 0.2 s, then 0.4 s: under a second, so the worker sleeps
    FAILS["r_read"] = 2
    run = advance(start("r_calls", {"tool": "r_read"}))

    assert run.status == "succeeded"
    assert [(r.status, (r.error or {}).get("delay_s")) for r in attempts(run)] == [
        ("retry", 0.2), ("retry", 0.4), ("succeeded", None)]


def test_delays_differ_between_steps_but_not_between_replays():
    policy = RetryPolicy(base_delay=10, max_delay=60)
    assert policy.delay(1, "run-a:1") == policy.delay(1, "run-a:1")
    assert len({policy.delay(3, f"run-{n}:1") for n in range(20)}) > 10
    assert all(0 <= policy.delay(k, f"r:{k}") <= min(60, 10 * 2 ** (k - 1)) for k in range(1, 10))


def test_out_of_attempts_parks_the_run_with_its_attempts_and_an_operator_retries(jitter):
    jitter["value"] = 0.001
    FAILS["r_read"] = 10
    run = advance(start("r_calls", {"tool": "r_read"}))

    assert (run.status, run.parked_by) == ("needs_attention", "retries")
    assert "gave up after 4 attempts" in run.status_reason
    rows = attempts(run)
    assert [r.status for r in rows] == ["retry"] * 4 and rows[-1].error["exhausted"]
    assert run.wait_kind == ""

    run = advance(Run.objects.get(id=run.id))  # a replay parks it again, calling nothing
    assert run.status == "needs_attention" and CALLS["r_read"] == 4

    FAILS["r_read"] = 0
    retry_step(run.id, 1, actor=OPERATOR, reason="the service is back")
    run = advance(Run.objects.get(id=run.id))
    assert run.status == "succeeded" and CALLS["r_read"] == 5
    entry = AuditEntry.objects.get(action="retry_step")
    assert (entry.username, entry.details) == ("olga", {"seq": 1, "after_attempt": 4})


def test_an_operator_fails_a_step_that_ran_out_of_attempts(jitter):
    jitter["value"] = 0.001
    FAILS["r_read"] = 10
    run = advance(start("r_adapts", {"tool": "r_read"}))
    assert run.parked_by == "retries"

    with pytest.raises(ActionRefused, match="did not happen"):
        resolve_step(run.id, 1, Resolution.HAPPENED, actor=OPERATOR, result={}, reason="x")
    resolve_step(run.id, 1, Resolution.FAIL, actor=OPERATOR, reason="the vendor is gone")
    run = advance(Run.objects.get(id=run.id))

    assert run.status == "succeeded"
    assert run.output == "adapted: failed_by_operator: failed by operator: the vendor is gone"
    assert CALLS["r_read"] == 4
    assert AuditEntry.objects.filter(action="resolve_fail", run=run).exists()


def test_retry_now_skips_the_backoff(jitter):
    FAILS["r_read"] = 1
    run = advance(start("r_calls", {"tool": "r_read"}))
    assert run.wait_kind == "retry"

    retry_step(run.id, 1, actor=OPERATOR)
    run = advance(Run.objects.get(id=run.id))
    assert run.status == "succeeded" and CALLS["r_read"] == 2
    with pytest.raises(ActionRefused, match="not waiting to be tried again"):
        retry_step(run.id, 1, actor=OPERATOR)


def test_a_timeout_stops_the_call_and_is_recorded_then_retried(jitter):
    jitter["value"] = 0.01
    SLOW["r_read"] = 30
    run = advance(start("r_calls", {"tool": "r_read"}))

    assert run.status == "succeeded"
    first, second = attempts(run)
    assert (first.status, first.error["type"]) == ("retry", "timeout")
    assert "timeout of 1 s" in first.error["message"]


def test_a_timeout_of_a_write_that_cannot_dedupe_leaves_it_in_doubt_never_called_twice():
    SLOW["r_plain"] = 30
    run = advance(start("r_calls", {"tool": "r_plain"}))

    assert (run.status, run.parked_by) == ("needs_attention", "")
    assert "in doubt" in run.status_reason and "timeout of 1 s" in run.status_reason
    assert JournalEntry.in_doubt(run.id).seq == 1
    run = advance(Run.objects.get(id=run.id))
    assert run.status == "needs_attention" and CALLS["r_plain"] == 1


def test_a_write_that_cannot_dedupe_is_retried_only_when_the_call_was_not_made():
    FAILS["r_plain"] = 1
    FAILURE["r_plain"] = CallNotMade
    run = advance(start("r_calls", {"tool": "r_plain"}))
    assert run.status == "succeeded" and CALLS["r_plain"] == 2

    # A transient error that does not prove the call was not made: it may have happened.
    FAILS["r_plain"] = 1
    FAILURE["r_plain"] = ConnectionResetError
    run = advance(start("r_adapts", {"tool": "r_plain"}))
    assert (run.status, JournalEntry.in_doubt(run.id).seq) == ("needs_attention", 1)
    assert "may have happened" in run.status_reason and CALLS["r_plain"] == 3

    # An error that is not transient fails the step, and the agent sees it.
    FAILS["r_plain"] = 1
    FAILURE["r_plain"] = ValueError
    run = advance(start("r_adapts", {"tool": "r_plain"}))
    assert run.output.startswith("adapted: ValueError") and CALLS["r_plain"] == 4


def test_an_idempotent_write_keeps_its_key_through_its_retries(jitter):
    jitter["value"] = 0.01
    FAILS["r_idem"] = 2
    run = advance(start("r_calls", {"tool": "r_idem"}))
    assert run.status == "succeeded"
    assert KEYS["r_idem"] == [f"{run.id}:1"] * 3


def test_a_permanent_error_is_never_retried():
    FAILS["r_read"] = 1
    FAILURE["r_read"] = retries.PermanentError
    run = advance(start("r_adapts", {"tool": "r_read"}))
    assert run.output.startswith("adapted: PermanentError") and CALLS["r_read"] == 1


def test_an_llm_call_is_retried_by_the_harness_not_the_model():
    FAILS["flaky_model"] = 2
    run = advance(start("r_model", {}))
    assert run.status == "succeeded" and CALLS["flaky_model"] == 3
    assert [r.status for r in attempts(run)] == ["retry", "retry", "succeeded"]


@pytest.mark.parametrize("budget, input, limit_text", [
    ("tool_calls", {"tool": "r_read", "times": 5}, "tool calls limit 3, spent 3"),
    ("llm_tokens", {"tool": "llm", "times": 5}, "LLM tokens limit 20, spent 30"),
])
def test_a_budget_exceeded_parks_the_run_naming_it_and_raising_it_resumes(budget, input, limit_text):
    run = advance(start("r_budgeted", input))
    assert (run.status, run.parked_by) == ("needs_attention", "budget")
    assert limit_text in run.status_reason

    run = raise_budget(run.id, {budget: None}, actor=OPERATOR, reason="this one is worth it")
    assert run.status == "queued"
    run = advance(run)
    assert run.status == "succeeded" and len(run.output) == 5
    entry = AuditEntry.objects.get(action="raise_budget")
    assert entry.details["after"][budget] is None and entry.username == "olga"


def test_the_cost_budget_parks_the_run_once_reached():
    run = advance(start("r_budgeted", {"tool": "llm", "times": 5}, budget={"cost_usd": 0.0002, "llm_tokens": None}))
    assert (run.status, run.parked_by) == ("needs_attention", "budget")
    assert "cost (USD) limit 0.0002, spent 0.0002" in run.status_reason
    assert CALLS["model"] == 2


def test_bad_provider_retry_settings_are_refused_naming_the_provider():
    from runs.llm import provider

    with pytest.raises(InvalidRetryPolicy, match="LLM provider 'r_bad_model': retry policy refused: max_delay"):
        provider("r_bad_model", retry=RetryPolicy(base_delay=5, max_delay=1))


def test_the_retry_budget_parks_before_the_retry(jitter):
    jitter["value"] = 0.001
    FAILS["r_read"] = 3
    run = advance(start("r_budgeted", {"tool": "r_read", "times": 1}))
    assert run.parked_by == "budget" and "retries limit 1, spent 1" in run.status_reason
    assert CALLS["r_read"] == 2


def test_a_start_overrides_the_budget_and_bad_budgets_are_refused():
    run = start("r_budgeted", {"tool": "r_read", "times": 5}, budget={"tool_calls": 10})
    assert advance(run).status == "succeeded"
    with pytest.raises(Exception, match="budget tool_calls must be a whole number"):
        start("r_budgeted", {"tool": "r_read"}, budget={"tool_calls": "many"})
    with pytest.raises(Exception, match="unknown budget tokens"):
        start("r_budgeted", {"tool": "r_read"}, budget={"tokens": 5})
    queued = start("r_budgeted", {"tool": "r_read", "times": 5})
    with pytest.raises(ActionRefused, match="budget tool_calls can only be raised: it is 3, not 1"):
        raise_budget(queued.id, {"tool_calls": 1}, actor=OPERATOR)
    with pytest.raises(ActionRefused, match="has finished"):
        raise_budget(run.id, {"tool_calls": 100}, actor=OPERATOR)


def test_on_limit_fail_fails_the_run_with_the_budget_named():
    run = advance(start("r_fails_on_limit", {"tool": "r_read", "times": 3}))
    assert run.status == "failed"
    assert run.error["type"] == "budget" and "tool calls limit 2, spent 2" in run.error["message"]


def test_a_loop_parks_the_run_and_names_the_repeated_steps():
    run = advance(start("r_calls", {"tool": "r_read", "times": 5}))
    assert (run.status, run.parked_by) == ("needs_attention", "loop")
    assert "loop" in run.status_reason and "steps 1, 2, 3" in run.status_reason
    assert CALLS["r_read"] == 2

    raise_budget(run.id, {"repeats": 10}, actor=OPERATOR, reason="it polls on purpose")
    run = advance(Run.objects.get(id=run.id))
    assert run.status == "succeeded" and CALLS["r_read"] == 5


@pytest.mark.parametrize("setting, value, named", [
    ("max_attempts", 0, "max_attempts must be a whole number of at least 1, not 0"),
    ("base_delay", -1, "base_delay must be a number of seconds from 0 to 86400, not -1"),
    ("base_delay", float("inf"), "base_delay must be a number of seconds from 0 to 86400, not inf"),
    ("timeout", 1e12, "timeout must be a number of seconds above 0 and at most 3000"),
    ("max_delay", -0.5, "max_delay must be a number of seconds"),
    ("timeout", 0, "timeout must be a number of seconds above 0"),
])
def test_bad_retry_settings_are_refused_at_registration(setting, value, named):
    with pytest.raises(InvalidRetryPolicy) as refused:
        @tool("r_badly_tuned", effect="read", retry=RetryPolicy(**{setting: value}))
        def r_badly_tuned(args: Value) -> dict:
            return {}
    assert "tool 'r_badly_tuned'" in str(refused.value) and named in str(refused.value)


def test_a_client_that_swallows_timeouts_is_still_stopped_at_the_limit(jitter):
    run = advance(start("r_calls", {"tool": "r_stubborn"}))
    assert run.status == "succeeded"
    first, second = attempts(run)
    assert (first.status, first.error["type"]) == ("retry", "timeout")
    assert CALLS["r_stubborn"] == 2


def test_a_timeout_inside_a_database_query_is_recorded_and_the_run_goes_on(jitter):
    run = advance(start("r_calls", {"tool": "r_slow_query"}))
    assert run.status == "succeeded"
    first, second = attempts(run)
    assert (first.status, first.error["type"], second.status) == ("retry", "timeout", "succeeded")


def test_a_timed_out_write_that_cannot_dedupe_asks_its_reconcile_hook_and_is_not_called_again():
    run = advance(start("r_calls", {"tool": "r_reconciled"}))
    assert run.status == "succeeded"
    assert run.output == [{"sent": 1, "reconciled": True}]
    assert CALLS["r_reconciled"] == 1
    [outcome] = attempts(run)
    assert outcome.actor.endswith("(reconciled)")


def test_retry_now_holds_for_a_step_run_again_after_it_was_in_doubt():
    from tools import breakers

    SLOW["r_plain"] = 30
    run = advance(start("r_calls", {"tool": "r_plain"}))
    assert JournalEntry.in_doubt(run.id) is not None
    for _ in range(30):  # the tool's breaker opens
        breakers.record("r_plain", failed=True)
    resolve_step(run.id, 1, Resolution.RUN_AGAIN, actor=OPERATOR, reason="the far side has no such send")
    run = advance(Run.objects.get(id=run.id))
    assert (run.status, run.wait_kind, run.wait_ref) == ("waiting", "retry", "1")
    assert "breaker" in run.status_reason

    retry_step(run.id, 1, actor=OPERATOR, reason="I checked it by hand")
    run = advance(Run.objects.get(id=run.id))
    assert run.status == "succeeded" and CALLS["r_plain"] == 2


def test_a_write_whose_attempts_failed_on_the_way_is_in_the_rollback_plan_as_maybe_done(jitter):
    """Its answer may have been lost after it acted: the plan does not undo it blindly, nor
    leave it out; a person checks it."""
    from runs.services import rollback_plan

    jitter["value"] = 0.001
    FAILS["r_idem"] = 10
    run = advance(start("r_calls", {"tool": "r_idem"}))
    assert run.parked_by == "retries"

    [step] = rollback_plan(Run.objects.get(id=run.id)).steps
    assert (step.seq, step.action) == (1, "irreversible")
    assert step.why.startswith("may have happened")


def test_a_poll_with_sleeps_in_between_is_not_a_loop():
    run = advance(start("r_poller", {"tool": "r_read", "times": 5}))
    assert run.status == "succeeded" and CALLS["r_read"] == 5
