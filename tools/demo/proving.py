"""Agents and tools that prove the runtime: the chaos agent (`manage.py chaos`, `manage.py
faults`), the poison agent (`manage.py faults`), the benchmark agents (`manage.py
bench_journal`) and the storm agents (`manage.py storm`).

The chaos tools act on LedgerCall, a table that stands for the outside world and records every
call they receive, so the chaos command can count effects that happened twice. Their writes are
undone by chaos_undo, which acts on the ledger too, so `chaos --rollback` can count
compensations that happened twice.
"""

import json
import os
import random
import signal
import time

from django.db import IntegrityError, connection, transaction
from pydantic import BaseModel, Field

from runs.agents import agent
from runs.budgets import Budget
from runs.llm import provider
from runs.recorder import ToolError
from runs.retries import RetryPolicy, TransientError
from tools.demo.models import LedgerCall, StormCall, StormService
from tools.registry import Compensation, Reconciled, tool


# The proving tools declare a compensation, so the default rule lets them run without
# approval: chaos and the benchmarks measure the journal, not people. The benchmarks' writes
# are undone by a no-op; the chaos agent's by chaos_undo, which takes the amount back.
UNDO = Compensation("proving_undo", lambda args, result: {"account": args.get("account", 0)})
CHAOS_UNDO = Compensation("chaos_undo", lambda args, result: {"account": args["account"], "amount": args["amount"]})


def _latency():
    # A remote call takes a while; long enough for a kill to land in the middle of one.
    time.sleep(random.uniform(0.05, 0.2))


class Account(BaseModel):
    account: int = Field(ge=0)


@tool(effect="write", idempotent=True, listed=False)
def proving_undo(args: Account, *, idempotency_key: str) -> dict:
    return {"undone": True}


class Amount(BaseModel):
    account: int = Field(ge=0)
    amount: int = Field(gt=0)


@tool(effect="write", idempotent=True, listed=False)
def chaos_undo(args: Amount, *, idempotency_key: str) -> dict:
    """The chaos writes' compensation, an idempotent write: the downstream takes the amount back
    once per key (its own key, ROLLBACK-RUN-ID:SEQ; the rollback run's input says which step
    that seq undoes) and records later calls with the same key with executed=False."""
    _latency()
    with transaction.atomic():
        # Two calls with the same key queue up on the key's lock, so only the first takes effect.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [idempotency_key])
        first = not LedgerCall.objects.filter(key=idempotency_key, tool="chaos_undo", executed=True).exists()
        LedgerCall.objects.create(key=idempotency_key, tool="chaos_undo", executed=first, amount=args.amount)
    return {"undone": args.amount}


@tool(effect="read", listed=False)
def chaos_balance(args: Account) -> dict:
    """Read: a deterministic balance."""
    _latency()
    return {"balance": 100 + args.account}


@tool(effect="write", idempotent=True, compensation=CHAOS_UNDO, listed=False)
def chaos_deposit(args: Amount, *, idempotency_key: str) -> dict:
    """Idempotent write: the downstream takes effect once per key."""
    _latency()
    try:
        with transaction.atomic():
            LedgerCall.objects.create(key=idempotency_key, tool="chaos_deposit", executed=True, amount=args.amount)
    except IntegrityError:
        LedgerCall.objects.create(key=idempotency_key, tool="chaos_deposit", executed=False, amount=args.amount)
    return {"deposited": args.amount}


def _charge_happened(args, idempotency_key):
    done = LedgerCall.objects.filter(key=idempotency_key, executed=True).exists()
    return Reconciled(happened=done, result={"charged": args.amount} if done else None)


@tool(effect="write", reconcile=_charge_happened, compensation=CHAOS_UNDO, listed=False)
def chaos_charge(args: Amount, *, idempotency_key: str) -> dict:
    """Non-idempotent write with a reconcile hook: the downstream can say whether key K happened."""
    _latency()
    LedgerCall.objects.create(key=idempotency_key, tool="chaos_charge", executed=True, amount=args.amount)
    return {"charged": args.amount}


@tool(effect="write", compensation=CHAOS_UNDO, listed=False)
def chaos_notify(args: Amount, *, idempotency_key: str) -> dict:
    """Non-idempotent write, no reconcile: in doubt after a crash, a person decides."""
    _latency()
    LedgerCall.objects.create(key=idempotency_key, tool="chaos_notify", executed=True, amount=args.amount)
    return {"notified": args.amount}


class ChaosInput(BaseModel):
    account: int = Field(ge=0)
    # `chaos --rollback`: fail after the last step, so that the run ends failed with its writes
    # done, and can be rolled back.
    fail_at_end: bool = False


class ChaosOutput(BaseModel):
    account: int
    total: int


# The chaos agent's steps, in order (seq 1 to 7).
CHAOS_STEPS = ["chaos_balance", "chaos_deposit", "chaos_charge", "now", "chaos_notify", "chaos_balance", "chaos_deposit"]


def chaos_expected_total(account):
    return (100 + account) + 3 * (account + 1)


# What each chaos write returns for an amount: the result an operator records when the ledger
# shows that a step in doubt took effect.
CHAOS_RESULTS = {"chaos_deposit": "deposited", "chaos_charge": "charged", "chaos_notify": "notified"}


def chaos_result(tool_name, amount):
    return {CHAOS_RESULTS[tool_name]: amount}


class AskedToFail(Exception):
    """The chaos agent's failure after its last step, asked for by its input (fail_at_end)."""


@agent("chaos")
def chaos(ctx, request: ChaosInput) -> ChaosOutput:
    n = request.account
    balance = ctx.tool("chaos_balance", account=n)["balance"]
    ctx.tool("chaos_deposit", account=n, amount=n + 1)
    ctx.tool("chaos_charge", account=n, amount=n + 1)
    ctx.now()
    ctx.tool("chaos_notify", account=n, amount=n + 1)
    ctx.tool("chaos_balance", account=n)
    ctx.tool("chaos_deposit", account=n, amount=n + 1)
    if request.fail_at_end:
        raise AskedToFail(f"account {n}: failing after the last step, as asked (chaos --rollback)")
    return ChaosOutput(account=n, total=balance + 3 * (n + 1))


# Poison: a tool that kills the process that calls it, every time (`manage.py faults`). The
# run can never finish a step: the sweeper hands it on at each lost lease until
# RUN_LOST_LEASES_LIMIT parks it in needs_attention. Each call is recorded in the ledger first
# (executed=False: it has no effect), so that the calls can be counted.


class Poison(BaseModel):
    account: int = Field(ge=0)


@tool(effect="read", listed=False)
def poison_kill_worker(args: Poison) -> dict:
    """Read that SIGKILLs its own process: a worker crash the run causes, every time."""
    LedgerCall.objects.create(key=f"poison:{args.account}", tool="poison_kill_worker", executed=False, amount=1)
    os.kill(os.getpid(), signal.SIGKILL)
    return {}  # never reached


@agent("poison")
def poison(ctx, request: Poison) -> dict:
    return ctx.tool("poison_kill_worker", account=request.account)


# Benchmarks: tools that do nothing, so that what is measured is the journal.


class Nothing(BaseModel):
    i: int


@tool(effect="read", listed=False)
def bench_read(args: Nothing) -> dict:
    return {"i": args.i}


@tool(effect="write", idempotent=True, compensation=UNDO, listed=False)
def bench_write(args: Nothing, *, idempotency_key: str) -> dict:
    return {"i": args.i}


class Steps(BaseModel):
    steps: int = Field(ge=0, le=1_000_000)


# The benchmarks' runs make as many steps as they are asked for.
UNBOUNDED = Budget(tool_calls=None)


@agent("bench_reads", budget=UNBOUNDED)
def bench_reads(ctx, request: Steps) -> int:
    for i in range(request.steps):
        ctx.tool("bench_read", i=i)
    return request.steps


@agent("bench_one_step")
def bench_one_step(ctx, request: Steps) -> int:
    return ctx.tool("bench_read", i=request.steps)["i"]


@agent("bench_writes", budget=UNBOUNDED)
def bench_writes(ctx, request: Steps) -> int:
    for i in range(request.steps):
        ctx.tool("bench_write", i=i)
    return request.steps


# Storm: a tool that fails at a rate (`manage.py storm`), called under our retry discipline and
# under a naive one, so that the command can count what each costs.
#
# The far side is StormService (its failure rate, set by the command) and StormCall (every call
# it receives). A failed call fails either before the effect or after it (the answer is lost);
# the key's next call then finds the effect and answers without a second one.

# A model that always answers: what is counted is how often each agent asks it.
STORM_MODEL = "storm_model"
# Short backoffs, so that at a failure rate of 0.3 every run succeeds within seconds: eight
# attempts fail together one time in 15,000.
STORM_POLICY = RetryPolicy(max_attempts=8, base_delay=0.2, max_delay=2.0, timeout=10.0)
# What frameworks do by default: five immediate retries of each call, then the model is asked
# again with the error, up to five times.
NAIVE_POLICY = RetryPolicy(max_attempts=6, base_delay=0, max_delay=0, timeout=10.0)
NAIVE_REPROMPTS = 5
# The naive agent has no budget and no loop guard, as such frameworks have none.
NAIVE_BUDGET = {"repeats": None, "retries": None, "tool_calls": None}


@provider(STORM_MODEL)
def storm_model(**request) -> dict:
    """An offline model: tokens grow with the prompt (a re-prompt carries the errors so far)."""
    input_tokens = 200 + len(json.dumps(request, sort_keys=True)) // 4
    output_tokens = 40
    return {
        "content": f"call the tool for item {request.get('item')}",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": round(input_tokens * 3e-6 + output_tokens * 15e-6, 6),
    }


class StormItem(BaseModel):
    item: int = Field(ge=0)


def _storm_far_side(tool_name, item, key):
    """One call reaching the far side: it fails at the service's rate, half the time before the
    effect and half the time after it; the effect happens once per key."""
    fails = random.random() < StormService.current_failure_rate()
    before_effect = fails and random.random() < 0.5
    with transaction.atomic():
        # Two calls with the same key queue up on the key's lock, so only the first takes effect.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [key])
        first = not before_effect and not StormCall.objects.filter(key=key, took_effect=True).exists()
        StormCall.objects.create(key=key, tool=tool_name, took_effect=first, answered=not fails)
    if before_effect:
        raise TransientError(f"item {item}: the service failed before acting")
    if fails:
        raise TransientError(f"item {item}: the service acted, and its answer was lost")
    return {"item": item, "recorded": "now" if first else "earlier"}


@tool(effect="write", idempotent=True, compensation=UNDO, listed=False, retry=STORM_POLICY)
def storm_call(args: StormItem, *, idempotency_key: str) -> dict:
    """An idempotent write to a flaky service, under our retry discipline (and its breaker)."""
    return _storm_far_side("storm_call", args.item, idempotency_key)


@tool(effect="write", idempotent=True, compensation=UNDO, listed=False, retry=NAIVE_POLICY, breaker=False)
def storm_call_naive(args: StormItem, *, idempotency_key: str) -> dict:
    """The same write to the same service, retried as frameworks do: at once, without a breaker."""
    return _storm_far_side("storm_call_naive", args.item, idempotency_key)


@agent("storm")
def storm(ctx, request: StormItem) -> dict:
    """Asks the model once, then makes the call; failures are retried by the harness."""
    ctx.llm(STORM_MODEL, task=f"record item {request.item}", item=request.item)
    return ctx.tool("storm_call", item=request.item)


class StormGaveUp(Exception):
    """The naive agent's last re-prompt failed too."""


# on_limit="fail": a call whose attempts ran out comes back to the agent as a ToolError (as a
# framework's tool error does), instead of parking the run for a person.
@agent("storm_naive", on_limit="fail")
def storm_naive(ctx, request: StormItem) -> dict:
    """Asks the model, makes the call, and after each failed call asks the model again with the
    error, as agent frameworks do by default."""
    errors = []
    for _ in range(1 + NAIVE_REPROMPTS):
        ctx.llm(STORM_MODEL, task=f"record item {request.item}", item=request.item, errors=errors)
        try:
            return ctx.tool("storm_call_naive", item=request.item)
        except ToolError as error:
            errors.append(error.message)
    raise StormGaveUp(f"item {request.item}: the call failed after {NAIVE_REPROMPTS} re-prompts")
