"""Agents and tools for the test suite. Worker subprocesses import this module too (see
AGENT_MODULES in tests.conftest.subprocess_env).

In-process tests count tool calls in CALLS and make a tool "die" with Crash: a BaseException
that nothing in the runtime catches, so it leaves the journal exactly as a worker killed at that
moment would (the intent written, no outcome). Tests with real worker processes count calls in
LedgerCall, the demo world's table, written in the tool's own transaction.
"""

import os
import time
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from runs.actors import Actor
from runs.agents import agent
from runs.budgets import Budget
from runs.retries import RetryPolicy, TransientError
from runs.llm import provider
from tools.demo.models import LedgerCall
from tools.registry import Compensation, Reconciled, tool

# Who starts the suite's runs, where no person does.
TEST = Actor.system("test")

CALLS = Counter()
KEYS = {}  # tool name -> idempotency keys received, in order
EFFECTS = set()  # keys whose effect happened (the downstream's own memory)
# tool name -> "before" (die before the effect) or "after" (die after it, before the outcome)
CRASH = {}
SCRIPT = []  # responses of the scripted model, taken in order


# Test writes declare a compensation, so the default rule allows them without approval; the
# approval tests use t_irreversible and t_delete, which do not.
UNDO = Compensation("t_undo", lambda args, result: {"value": 0})


class Crash(BaseException):
    """A worker dying mid-call, in-process."""


def reset():
    REVERSED.clear()
    CALLS.clear()
    KEYS.clear()
    EFFECTS.clear()
    CRASH.clear()
    SCRIPT.clear()
    FAILS.clear()
    FAILURE.clear()
    SLOW.clear()


def _called(name, key=None):
    CALLS[name] += 1
    KEYS.setdefault(name, []).append(key)
    if CRASH.get(name) == "before":
        raise Crash(name)
    if key is not None:
        EFFECTS.add(key)
    if CRASH.get(name) == "after":
        raise Crash(name)


class Value(BaseModel):
    value: int = Field(ge=0)


@tool(effect="read")
def t_read(args: Value) -> dict:
    _called("t_read")
    return {"read": args.value}


@tool(effect="write", idempotent=True, compensation=UNDO)
def t_idem(args: Value, *, idempotency_key: str) -> dict:
    _called("t_idem", idempotency_key)
    return {"idem": args.value}


def _recon_lookup(args, idempotency_key):
    if CRASH.get("t_recon_unknown"):
        return None
    if CRASH.get("t_recon_raises"):
        raise ConnectionError("the payment provider did not answer")
    happened = idempotency_key in EFFECTS
    return Reconciled(happened=happened, result={"recon": args.value, "reconciled": True} if happened else None)


@tool(effect="write", reconcile=_recon_lookup, compensation=UNDO)
def t_recon(args: Value, *, idempotency_key: str) -> dict:
    _called("t_recon", idempotency_key)
    return {"recon": args.value}


@tool(effect="write", compensation=UNDO)
def t_plain(args: Value, *, idempotency_key: str) -> dict:
    _called("t_plain", idempotency_key)
    return {"plain": args.value}


@tool(effect="read")
def t_fail(args: Value) -> dict:
    _called("t_fail")
    raise RuntimeError(f"the service refused {args.value}")


@provider("scripted")
def scripted_model(**request):
    CALLS["model"] += 1
    content = SCRIPT.pop(0) if SCRIPT else f"echo: {request.get('prompt', '')}"
    return {"content": content, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.0001}


class Empty(BaseModel):
    pass


@agent("t_protocol")
def t_protocol(ctx, request: Value) -> dict:
    v = request.value
    return {
        "read": ctx.tool("t_read", value=v),
        "idem": ctx.tool("t_idem", value=v),
        "recon": ctx.tool("t_recon", value=v),
        "plain": ctx.tool("t_plain", value=v),
        "llm": ctx.llm("scripted", prompt=f"say {v}"),
        "now": ctx.now().isoformat(),
        "uuid": str(ctx.uuid()),
    }


@agent("t_contract")
def t_contract(ctx, request: Empty) -> dict:
    errors = {}
    for name, args in [("no_such_tool", {"value": 1}), ("t_read", {"value": -1}), ("t_read", {})]:
        try:
            ctx.tool(name, **args)
        except Exception as error:  # the agent sees the contract error and adapts
            errors[f"{name}{sorted(args.items())}"] = str(error)
    try:
        ctx.tool("t_fail", value=7)
    except Exception as error:
        errors["t_fail"] = str(error)
    return errors


SHIFT = {"second": "sleep"}
LENGTH = {"reads": 2}  # how many reads t_lengthy makes: a test changes it under a run


@agent("t_lengthy")
def t_lengthy(ctx, request: Empty) -> int:
    return sum(ctx.tool("t_read", value=n)["read"] for n in range(LENGTH["reads"]))


@agent("t_shifty")
def t_shifty(ctx, request: Empty) -> str:
    ctx.tool("t_read", value=1)
    if SHIFT["second"] == "sleep":
        ctx.sleep(3600)
    else:
        ctx.tool("t_idem", value=2)
    return "done"


class Sleep(BaseModel):
    seconds: float
    steps: int = 1


@agent("t_sleeper")
def t_sleeper(ctx, request: Sleep) -> int:
    total = 0
    for i in range(request.steps):
        total += ctx.tool("t_read", value=i)["read"]
        ctx.sleep(request.seconds)
    return total


@agent("t_parent")
def t_parent(ctx, request: Value) -> dict:
    child = ctx.start_child("t_child", {"value": request.value})
    return {"child": str(child), "output": ctx.wait_child(child)}


@agent("t_two_children")
def t_two_children(ctx, request: Value) -> list:
    first = ctx.start_child("t_sleeper", {"seconds": 3600})
    second = ctx.start_child("t_sleeper", {"seconds": 3600})
    return [ctx.wait_child(second), ctx.wait_child(first)]


@agent("t_child")
def t_child(ctx, request: Value) -> int:
    ctx.sleep(0.5)
    return ctx.tool("t_read", value=request.value)["read"] * 2


@agent("t_failing_child_parent")
def t_failing_child_parent(ctx, request: Empty) -> str:
    try:
        ctx.run_child("t_contract_breaker", {})
    except Exception as error:
        return str(error)
    return "no error"


@agent("t_failing_tool")
def t_failing_tool(ctx, request: Value) -> dict:
    """Fails at its tool step (the failures on the activity page)."""
    return ctx.tool("t_fail", value=request.value)


@agent("t_contract_breaker")
def t_contract_breaker(ctx, request: Empty) -> int:
    raise ValueError("this child always fails")


# For worker processes: calls counted in the outside world (LedgerCall).


class Blocking(BaseModel):
    value: int
    release: str  # a file path; the tool blocks until it exists


@tool(effect="read")
def w_read(args: Blocking) -> dict:
    LedgerCall.objects.create(key=f"w_read:{args.value}", tool="w_read", executed=True)
    return {"value": args.value}


# The blocking tools wait for their test as long as it takes: no timeout.
UNTIMED = RetryPolicy(timeout=None)


@tool(effect="write", idempotent=True, compensation=UNDO, retry=UNTIMED)
def w_block(args: Blocking, *, idempotency_key: str) -> dict:
    LedgerCall.objects.create(key=idempotency_key, tool="w_block", executed=True)
    _wait_for_release(args.release)
    return {"released": True}


def _wait_for_release(path, seconds=120):
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@tool(effect="write", compensation=UNDO)
def w_slow(args: Blocking, *, idempotency_key: str) -> dict:
    """A plain write that takes longer than two leases of the test workers."""
    LedgerCall.objects.create(key=idempotency_key, tool="w_slow", executed=True)
    time.sleep(5)
    return {"slow": True}


@agent("w_long_call")
def w_long_call(ctx, request: Blocking) -> bool:
    return ctx.tool("w_slow", value=request.value, release=request.release)["slow"]


@tool(effect="write", idempotent=True, compensation=UNDO)
def w_write(args: Blocking, *, idempotency_key: str) -> dict:
    LedgerCall.objects.create(key=idempotency_key, tool="w_write", executed=True)
    return {"written": args.value}


@agent("w_blocker")
def w_blocker(ctx, request: Blocking) -> int:
    ctx.tool("w_read", value=request.value, release=request.release)
    ctx.tool("w_write", value=request.value, release=request.release)
    ctx.tool("w_block", value=request.value, release=request.release)
    ctx.tool("w_write", value=request.value + 1, release=request.release)
    return request.value


@tool(effect="write", compensation=UNDO, retry=UNTIMED)
def w_block_plain(args: Blocking, *, idempotency_key: str) -> dict:
    """A plain (non-idempotent) write that blocks until its release file exists."""
    LedgerCall.objects.create(key=idempotency_key, tool="w_block_plain", executed=True)
    _wait_for_release(args.release)
    return {"sent": True}


@agent("w_plain_blocker")
def w_plain_blocker(ctx, request: Blocking) -> dict:
    ctx.tool("w_read", value=request.value, release=request.release)
    sent = ctx.tool("w_block_plain", value=request.value, release=request.release)
    return {"sent": sent}


class Text(BaseModel):
    text: str


@tool(effect="read")
def t_echo(args: Text) -> dict:
    return {"echo": args.text}


@agent("t_echo_agent")
def t_echo_agent(ctx, request: Text) -> dict:
    return ctx.tool("t_echo", text=request.text)


class Count(BaseModel):
    n: int = Field(ge=1, le=1000)


@tool(effect="read")
def f_read(args: Value) -> dict:
    return {"read": args.value}


@tool(effect="write", idempotent=True, compensation=UNDO)
def f_write(args: Value, *, idempotency_key: str) -> dict:
    time.sleep(0.02)  # a remote call takes a moment
    return {"wrote": args.value}


@agent("f_writer")
def f_writer(ctx, request: Count) -> int:
    for i in range(request.n):
        ctx.tool("f_read", value=i)
        ctx.tool("f_write", value=i)
    return request.n


@tool(effect="write", idempotent=True)
def t_undo(args: Value, *, idempotency_key: str) -> dict:
    return {"undone": True}


class Card(BaseModel):
    value: int = Field(ge=0)
    card_number: str = "4111"


@tool(effect="write", sensitive=["card_number"])
def t_irreversible(args: Card, *, idempotency_key: str) -> dict:
    _called("t_irreversible", idempotency_key)
    return {"charged": args.value, "card_ends": args.card_number[-2:]}


@tool(effect="delete")
def t_delete(args: Value, *, idempotency_key: str) -> dict:
    _called("t_delete", idempotency_key)
    return {"deleted": args.value}


@agent("t_guarded")
def t_guarded(ctx, request: Value) -> dict:
    charged = ctx.tool("t_irreversible", value=request.value, card_number="4111111111111111")
    try:
        deleted = ctx.tool("t_delete", value=request.value)
    except Exception as error:
        deleted = {"error": str(error)}
    return {"charged": charged, "deleted": deleted}


@agent("t_deleter")
def t_deleter(ctx, request: Value) -> dict:
    try:
        return ctx.tool("t_delete", value=request.value)
    except Exception as error:  # the agent receives the operator's reason and reports it
        return {"not_deleted": str(error)}


class Receipt(BaseModel):
    receipt_id: int


@tool(effect="read", output_model=Receipt)
def t_bad_receipt(args: Value) -> dict:
    return {"receipt": "not an id"}


@agent("t_receipts")
def t_receipts(ctx, request: Value) -> str:
    try:
        ctx.tool("t_bad_receipt", value=request.value)
    except Exception as error:
        return str(error)
    return "fits"


@agent("t_guarded_parent")
def t_guarded_parent(ctx, request: Value) -> dict:
    return ctx.run_child("t_deleter", {"value": request.value})


# For the no-fork workers: which process and which database connection ran a step.


class Numbered(BaseModel):
    value: int


@tool(effect="read")
def w_backend(args: Numbered) -> dict:
    """Records the worker's pid (in the key) and its database backend's pid (as the amount)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    LedgerCall.objects.create(key=f"w_backend:{args.value}:pid={os.getpid()}", tool="w_backend",
                              executed=True, amount=backend)
    return {"backend": backend}


@agent("w_backend_pid")
def w_backend_pid(ctx, request: Numbered) -> int:
    return ctx.tool("w_backend", value=request.value)["backend"]


@tool(effect="read")
def w_leave_transaction(args: Numbered) -> dict:
    """Leaves its connection inside a transaction that Django does not know of: open (value 0),
    or failed (value 1)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT 1 / %s", [1 - args.value])
    return {}


@agent("w_transaction_leaver")
def w_transaction_leaver(ctx, request: Numbered) -> dict:
    return ctx.tool("w_leave_transaction", value=request.value)


# Rollback ------------------------------------------------------------------------------------

REVERSED = []  # values whose deposit a compensation took back, in the order it happened


@tool(effect="write", idempotent=True)
def t_reverse(args: Value, *, idempotency_key: str) -> dict:
    if CRASH.get("t_reverse") == f"refuse {args.value}":
        raise RuntimeError(f"the bank refused to take back {args.value}")
    _called("t_reverse", idempotency_key)
    REVERSED.append(args.value)
    return {"reversed": args.value}


@tool(effect="write", idempotent=True,
      compensation=Compensation("t_reverse", lambda args, result: {"value": result["deposited"]}))
def t_deposit(args: Value, *, idempotency_key: str) -> dict:
    _called("t_deposit", idempotency_key)
    return {"deposited": args.value}


@tool(effect="write")
def t_notify(args: Value, *, idempotency_key: str) -> dict:
    """An irreversible write (no compensation): it needs an allow rule to run unapproved."""
    _called("t_notify", idempotency_key)
    return {"notified": args.value}


@agent("t_saga")
def t_saga(ctx, request: Value) -> dict:
    v = request.value
    ctx.tool("t_read", value=v)  # 1
    ctx.tool("t_deposit", value=v)  # 2
    ctx.tool("t_notify", value=v)  # 3
    child = ctx.run_child("t_saga_child", {"value": v + 10})  # 4, 5
    ctx.tool("t_deposit", value=v + 1)  # 6
    ctx.tool("t_plain", value=v)  # 7
    ctx.tool("t_fail", value=v)  # 8: the run fails here
    return {"child": child}


# The same agent, declared to roll back when it fails.
agent("t_saga_auto", on_failure="rollback")(t_saga)


@agent("t_saga_child")
def t_saga_child(ctx, request: Value) -> dict:
    return ctx.tool("t_deposit", value=request.value)


# For worker processes: compensations counted in the outside world (LedgerCall), one that
# blocks until released, so a worker can be killed in the middle of it.


class Deposit(BaseModel):
    value: int
    release: str = ""


@tool(effect="write", idempotent=True)
def w_withdraw(args: Deposit, *, idempotency_key: str) -> dict:
    executed = not LedgerCall.objects.filter(key=idempotency_key, executed=True).exists()
    LedgerCall.objects.create(key=idempotency_key, tool="w_withdraw", executed=executed, amount=args.value)
    if args.release:
        _wait_for_release(args.release)
    return {"withdrawn": args.value}


@tool(effect="write", idempotent=True,
      compensation=Compensation("w_withdraw", lambda args, result: {"value": args["value"], "release": args["release"]}))
def w_deposit(args: Deposit, *, idempotency_key: str) -> dict:
    LedgerCall.objects.create(key=idempotency_key, tool="w_deposit", executed=True, amount=args.value)
    return {"deposited": args.value}


@agent("w_saga")
def w_saga(ctx, request: Deposit) -> None:
    for value in (1, 2, 3):
        ctx.tool("w_deposit", value=value, release=request.release)
    raise RuntimeError("the agent gave up after its deposits")


# For forks: a tool with an output model whose result the next step uses.


@tool(effect="read", output_model=Receipt)
def t_receipt(args: Value) -> dict:
    _called("t_receipt")
    return {"receipt_id": args.value}


@agent("t_forkable")
def t_forkable(ctx, request: Value) -> dict:
    receipt = ctx.tool("t_receipt", value=request.value)
    return {
        "receipt": receipt,
        "idem": ctx.tool("t_idem", value=receipt["receipt_id"]),
        "llm": ctx.llm("scripted", prompt=f"receipt {receipt['receipt_id']}"),
    }


# A tool whose fields share names with the agent API's own parameters (issue 10, fault 3).


class Awkward(BaseModel):
    name: str
    provider: str
    self: int
    kind: str


@tool(effect="read")
def t_awkward(args: Awkward) -> dict:
    return args.model_dump()


@agent("t_awkward_agent")
def t_awkward_agent(ctx, request: Empty) -> dict:
    echoed = ctx.tool("t_awkward", name="a", provider="b", self=3, kind="c")
    answer = ctx.llm("scripted", provider="mine", name="x", prompt="hi")
    return {"tool": echoed, "llm": answer["content"]}


# Poison: values the journal cannot store, and agents that raise what is not an Exception
# (issue 11, "never loop"). Each counts its calls in LedgerCall, so tests with real workers see
# how often the tool's far side was reached.


class Poison(BaseModel):
    where: str  # "read", "write", "output", "error", "exit", "interrupt", "kill"


def _ledger(tool, key=""):
    LedgerCall.objects.create(key=key or f"{tool}:{time.time_ns()}", tool=tool, executed=True, amount=1)


@tool(effect="read")
def p_read(args: Poison) -> dict:
    _ledger("p_read")
    if args.where == "error":
        raise ValueError("bad byte \x00 in the reply")
    if args.where == "kill":
        os.kill(os.getpid(), 9)  # the worker dies here, every time
    return {"text": "nul \x00 inside" if args.where == "read" else "clean"}


@tool(effect="write", idempotent=True, compensation=UNDO)
def p_write(args: Poison, *, idempotency_key: str) -> dict:
    _ledger("p_write", idempotency_key)
    return {"receipt": "\x00"}


@agent("p_poison")
def p_poison(ctx, request: Poison) -> dict:
    first = ctx.tool("p_read", where=request.where)
    if request.where == "write":
        ctx.tool("p_write", where=request.where)
    if request.where == "output":
        return {"text": "out \x00 put"}
    if request.where == "exit":
        raise SystemExit(3)
    if request.where == "interrupt":
        raise KeyboardInterrupt()
    return first


# The start form (runs/start_form.py): an input model with a field of each kind the form draws,
# and an agent with no input model, whose form is one JSON text area.


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    city: str


class Order(BaseModel):
    customer: str = Field(min_length=2, description="Who placed the order.")
    quantity: int = Field(ge=1, le=100)
    weight_kg: float = 1.5
    gift: bool = False
    colour: Colour = Colour.BLUE
    size: Literal["S", "M", "L"] | None = None
    tags: list[str] = []
    address: Address | None = None
    # Named like the form's own field: the two must not mix.
    idempotency_key: str = ""


@agent("t_order_form")
def t_order_form(ctx, order: Order) -> dict:
    """Takes an order with a field of each kind the start form draws."""
    ctx.tool("t_read", value=order.quantity)
    return order.model_dump(mode="json")


@agent("t_untyped")
def t_untyped(ctx, request):
    return request


class Waits(BaseModel):
    seconds: float = 1


@agent("t_waterfall")
def t_waterfall(ctx, request: Waits) -> dict:
    """A read, a sleep, then a delete that waits for a person: each kind of lane of the waterfall."""
    ctx.tool("w_read", value=1, release="")
    ctx.sleep(request.seconds)
    return ctx.tool("t_delete", value=2)


# Retries, budgets and loops (tests/test_retries.py) ---------------------------------------------


# tool name -> how many of its next calls fail; what they raise
FAILS = Counter()
FAILURE = {}
SLOW = {}  # tool name -> seconds its next call takes


def _flaky(name, key=None):
    _called(name, key)
    if SLOW.get(name):
        seconds = SLOW.pop(name)
        time.sleep(seconds)
    if FAILS[name] > 0:
        FAILS[name] -= 1
        raise FAILURE.get(name, TransientError)(f"{name} is having a bad moment")


@tool(effect="read", retry=RetryPolicy(max_attempts=4, base_delay=2.0, max_delay=5.0, timeout=1.0))
def r_read(args: Value) -> dict:
    _flaky("r_read")
    return {"read": args.value}


@tool(effect="write", idempotent=True, compensation=UNDO,
      retry=RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=5.0, timeout=1.0))
def r_idem(args: Value, *, idempotency_key: str) -> dict:
    _flaky("r_idem", idempotency_key)
    return {"idem": args.value}


@tool(effect="write", compensation=UNDO, retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01, timeout=1.0))
def r_plain(args: Value, *, idempotency_key: str) -> dict:
    """A write that cannot dedupe."""
    _flaky("r_plain", idempotency_key)
    return {"plain": args.value}


class Step(BaseModel):
    tool: str
    value: int = 1
    times: int = 1


@agent("r_calls")
def r_calls(ctx, request: Step) -> list:
    """Calls one tool `times` times with the same arguments."""
    return [ctx.tool(request.tool, value=request.value) for _ in range(request.times)]


@agent("r_fails_on_limit", on_limit="fail", budget=Budget(tool_calls=2))
def r_fails_on_limit(ctx, request: Step) -> list:
    return [ctx.tool(request.tool, value=n) for n in range(request.times)]


@agent("r_budgeted", budget=Budget(tool_calls=3, retries=1, llm_tokens=20, cost_usd=1.0))
def r_budgeted(ctx, request: Step) -> list:
    if request.tool == "llm":
        return [ctx.llm("scripted", prompt=f"{n}") for n in range(request.times)]
    return [ctx.tool(request.tool, value=n) for n in range(request.times)]


@agent("r_adapts")
def r_adapts(ctx, request: Step) -> str:
    """Catches its tool's failure and says so."""
    try:
        ctx.tool(request.tool, value=request.value)
    except Exception as error:
        return f"adapted: {error}"
    return "called"


@provider("flaky_model", retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01, timeout=5.0))
def flaky_model(**request):
    _flaky("flaky_model")
    return {"content": "ok", "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.0001}


@agent("r_model")
def r_model(ctx, request: Empty) -> str:
    return ctx.llm("flaky_model", prompt="hi")["content"]


# A remote service for the worker processes' tests: down while LedgerCall holds no "up" row for
# it (a switch the test flips), and every call recorded.

def _remote(name, key, slow_backoff):
    up = LedgerCall.objects.filter(key=f"{name}:up", tool="switch").exists()
    LedgerCall.objects.create(key=key, tool=name, executed=up)
    if not up:
        raise TransientError(f"{name} is down")


@tool(effect="read", retry=RetryPolicy(max_attempts=3, base_delay=3600, max_delay=3600, timeout=5.0))
def r_remote_slow(args: Value) -> dict:
    """A backoff of up to an hour: its retry waits, and frees the worker."""
    _remote("r_remote_slow", f"slow-{time.time_ns()}", True)
    return {"read": args.value}


@tool(effect="read", retry=RetryPolicy(max_attempts=50, base_delay=0.2, max_delay=0.2, timeout=5.0))
def r_remote(args: Value) -> dict:
    """Retried soon, many times: only its breaker keeps it from being hammered."""
    _remote("r_remote", f"remote-{time.time_ns()}", False)
    return {"read": args.value}


@tool(effect="read", retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, timeout=1.0))
def r_hang(args: Value) -> dict:
    """Its first call hangs for a minute (in a worker process: its timeout must stop it)."""
    first = not LedgerCall.objects.filter(key=f"r_hang:{args.value}", tool="r_hang").exists()
    LedgerCall.objects.create(key=f"r_hang:{args.value}", tool="r_hang", executed=first)
    if first:
        time.sleep(60)
    return {"read": args.value}


@tool(effect="read", retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, timeout=0.5))
def r_stubborn(args: Value) -> dict:
    """A client that takes a timeout for its own and tries again, as HTTP clients do."""
    _called("r_stubborn")
    if CALLS["r_stubborn"] == 1:
        for _ in range(20):
            try:
                time.sleep(1)
            except TimeoutError:
                continue
    return {"read": args.value}


@tool(effect="read", retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01, timeout=0.5))
def r_slow_query(args: Value) -> dict:
    """A database query that outlives its timeout, on the connection the journal uses too."""
    from django.db import connection

    _called("r_slow_query")
    if CALLS["r_slow_query"] == 1:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(5)")
    return {"read": args.value}


def _sent_anyway(args, idempotency_key):
    return Reconciled(happened=True, result={"sent": args.value, "reconciled": True})


@tool(effect="write", compensation=UNDO, reconcile=_sent_anyway,
      retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01, timeout=0.5))
def r_reconciled(args: Value, *, idempotency_key: str) -> dict:
    """A write that cannot dedupe, whose far side can say whether key K arrived."""
    _called("r_reconciled", idempotency_key)
    time.sleep(5)
    return {"sent": args.value}


@agent("r_poller")
def r_poller(ctx, request: Step) -> int:
    """Polls a read, sleeping in between: a poll, not a loop."""
    for _ in range(request.times):
        ctx.tool(request.tool, value=request.value)
        ctx.sleep(0)
    return request.times
