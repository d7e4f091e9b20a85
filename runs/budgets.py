"""Budgets: what one run may spend, and what it has spent, read off its journal.

An agent declares its defaults (`@agent(..., budget=Budget(...))`); a start may override them
(the run keeps the limits it started with, in Run.budget, and an operator may raise them). The
recorder asks `exceeded` before every attempt of a tool or LLM step, and parks (or fails, as the
agent says with `on_limit`) a run that would go over; nothing is cut short silently.

| budget      | counts                                                             |
|-------------|--------------------------------------------------------------------|
| tool_calls  | tool calls made (every attempt; refused and breaker-held steps not) |
| retries     | attempts that followed a failed attempt of the same step           |
| llm_tokens  | input and output tokens the model providers reported               |
| cost_usd    | the cost the model providers reported                              |
| repeats     | the same tool with the same arguments, this many times in a row,   |
|             | is a loop (tool steps only; other steps in between do not count)    |

None means no limit.
"""

from dataclasses import asdict, dataclass, fields

from django.conf import settings

KEYS = ("tool_calls", "retries", "llm_tokens", "cost_usd", "repeats")
LABELS = {
    "tool_calls": "tool calls", "retries": "retries", "llm_tokens": "LLM tokens",
    "cost_usd": "cost (USD)", "repeats": "same call in a row",
}


class InvalidBudget(ValueError):
    pass


@dataclass(frozen=True)
class Budget:
    tool_calls: int | None = 500
    retries: int | None = 50
    llm_tokens: int | None = None
    cost_usd: float | None = None
    repeats: int | None | str = "LOOP_REPEAT_LIMIT"  # the setting's value, unless given

    def as_limits(self):
        limits = asdict(self)
        if limits["repeats"] == "LOOP_REPEAT_LIMIT":
            limits["repeats"] = settings.LOOP_REPEAT_LIMIT
        return limits


def limits_for(declared, overrides):
    """The limits a run is held to: its agent's declared Budget (None: the defaults, for an agent
    this process does not know) under the run's own limits (Run.budget: what its start said, as
    raised by operators since). The recorder, the run page and the commands all read them here.
    It takes the agent's Budget, not the run, because this module sits below runs.agents."""
    return {**(declared or Budget()).as_limits(), **(overrides or {})}


def checked_limits(values, owner):
    """Budget limits from untrusted input ({key: number or None}); InvalidBudget names the key."""
    if not isinstance(values, dict):
        raise InvalidBudget(f"{owner}: a budget is an object of limits, not {type(values).__name__}")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise InvalidBudget(f"{owner}: unknown budget {', '.join(unknown)} (known: {', '.join(KEYS)})")
    limits = {}
    for key, value in values.items():
        if value is None:
            limits[key] = None
            continue
        whole = key != "cost_usd"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value != value:
            kind = "a whole number" if whole else "a number"
            raise InvalidBudget(f"{owner}: budget {key} must be {kind} or null, not {value!r}")
        if value < 0 or (key == "repeats" and value < 2):
            least = 2 if key == "repeats" else 0
            raise InvalidBudget(f"{owner}: budget {key} must be at least {least}, not {value!r}")
        limits[key] = value
    return limits


def check_budget(budget, owner):
    if not isinstance(budget, Budget):
        raise InvalidBudget(f"{owner}: budget must be a runs.budgets.Budget, not {budget!r}")
    checked_limits({f.name: getattr(budget, f.name) for f in fields(budget)
                    if not (f.name == "repeats" and getattr(budget, f.name) == "LOOP_REPEAT_LIMIT")}, owner)
    return budget


@dataclass
class Spent:
    tool_calls: int = 0
    retries: int = 0
    llm_tokens: int = 0
    cost_usd: float = 0.0
    # What retries cost: seconds waited on backoff, and tokens of model calls that repeated an
    # earlier attempt.
    retry_seconds: float = 0.0
    retry_tokens: int = 0


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def made_call(row):
    """Whether the first row of an attempt stands for a call made to a tool or a model (not a
    refusal, a breaker that held it, or an operator's decision)."""
    return row.kind in ("tool", "llm") and not (row.error or {}).get("not_called")


class Counter:
    """Counts what a run spent, one journal row at a time (rows in journal order)."""

    def __init__(self):
        self.spent = Spent()
        self._seen = set()  # (seq, attempt) whose first row was counted
        self._last_failed = {}  # seq -> its latest outcome was a failed attempt to be retried

    def add(self, row):
        spent = self.spent
        if (row.seq, row.attempt) not in self._seen:
            self._seen.add((row.seq, row.attempt))
            if made_call(row):
                spent.tool_calls += row.kind == "tool"
                spent.retries += self._last_failed.get(row.seq, False)
        if row.phase != "outcome":
            return
        error = row.error or {}
        if row.status == "retry":
            spent.retry_seconds += _float(error.get("delay_s"))
        if row.kind == "llm" and row.status == "succeeded" and isinstance(row.result, dict):
            tokens = _int(row.result.get("input_tokens")) + _int(row.result.get("output_tokens"))
            spent.llm_tokens += tokens
            spent.cost_usd += _float(row.result.get("cost_usd"))
            if self._last_failed.get(row.seq):
                spent.retry_tokens += tokens
        self._last_failed[row.seq] = row.status == "retry"


def spent_from(rows):
    """What the journal's rows (in journal order; any objects with the journal's columns) spent."""
    counter = Counter()
    for row in rows:
        counter.add(row)
    return counter.spent


def exceeded(limits, spent, key, adding=1):
    """The reason text if spending `adding` more of `key` goes over its limit, else ""."""
    limit = limits.get(key)
    if limit is None:
        return ""
    used = getattr(spent, key)
    if key in ("llm_tokens", "cost_usd"):
        # A model call's size is known only after it; a run that has reached its limit stops.
        over = used >= limit
    else:
        over = used + adding > limit
    if not over:
        return ""
    shown = f"{used:.4f}".rstrip("0").rstrip(".") if key == "cost_usd" else used
    return f"budget exceeded: {LABELS[key]} limit {limit}, spent {shown}"


class Trail:
    """The loop rule, one step at a time: the seqs of the latest tool steps that asked for the
    same call (tool and arguments), in a row. Only tool steps count; a sleep breaks the row (a
    call repeated after a sleep is a poll). The recorder parks a run whose next call would make
    the row `repeats` long; the run page marks the row's steps."""

    def __init__(self):
        self.seqs, self._call = [], None

    def follow(self, seq, name, args_hash):
        if self._call == (name, args_hash):
            self.seqs.append(seq)
        else:
            self.seqs, self._call = [seq], (name, args_hash)

    def break_off(self):
        self.seqs, self._call = [], None
