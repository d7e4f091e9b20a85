"""The agent registry: `@agent("name")` on `def fn(ctx, input) -> output`.

The input and output are validated by pydantic from the function's annotations, so an agent
that says `def support(ctx, request: SupportRequest) -> SupportResult` gets a SupportRequest and
must return a SupportResult. Agent modules are listed in the AGENT_MODULES setting.
"""

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings
from pydantic import TypeAdapter, ValidationError

from runs.budgets import Budget, check_budget


# The built-in agent that runs a rollback's compensations (runs/rollback.py). Its runs call only
# what an operator confirmed; the confirmation records an approved request per compensation.
ROLLBACK_AGENT = "rollback"


class UnknownAgent(LookupError):
    pass


class InvalidInput(ValueError):
    pass


ON_FAILURE = ("fail", "rollback")
# When a run reaches a limit (a budget, a loop, a step's last attempt): it parks in
# needs_attention for a person, or fails (and on_failure follows).
ON_LIMIT = ("park", "fail")


@dataclass(frozen=True)
class Agent:
    name: str
    fn: Callable
    input_adapter: TypeAdapter
    output_adapter: TypeAdapter
    # What happens when a run fails: it stays failed, or it is rolled back at once (runs/rollback.py).
    on_failure: str = "fail"
    # What one run may spend (runs/budgets.py), unless its start says otherwise.
    budget: Budget = Budget()
    on_limit: str = "park"

    def parse_input(self, data):
        """The agent's input object from JSON data; InvalidInput names what is wrong."""
        try:
            return self.input_adapter.validate_python(data)
        except ValidationError as error:
            raise InvalidInput(f"input for agent {self.name!r} is invalid: {describe(error)}") from None

    def dump_input(self, value):
        return self.input_adapter.dump_python(value, mode="json")

    def dump_output(self, value):
        try:
            checked = self.output_adapter.validate_python(value)
        except ValidationError as error:
            raise InvalidInput(f"output of agent {self.name!r} is invalid: {describe(error)}") from None
        return self.output_adapter.dump_python(checked, mode="json")


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the field and the rule: 'amount_cents: ...'."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "input"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


AGENTS: dict[str, Agent] = {}


def agent(name, *, on_failure="fail", budget=None, on_limit="park"):
    """Register `fn(ctx, input) -> output` as agent `name`. on_failure="rollback" rolls a failed
    run back at once, with the plan an operator would be shown (docs/rollback.md). `budget`
    bounds each run (docs/retries.md); on_limit="fail" fails a run that reaches a limit instead
    of parking it for a person."""
    if on_failure not in ON_FAILURE:
        raise ValueError(f"agent {name!r}: on_failure must be one of {', '.join(ON_FAILURE)}, not {on_failure!r}")
    if on_limit not in ON_LIMIT:
        raise ValueError(f"agent {name!r}: on_limit must be one of {', '.join(ON_LIMIT)}, not {on_limit!r}")
    budget = check_budget(Budget() if budget is None else budget, f"agent {name!r}")

    def register(fn):
        signature = inspect.signature(fn)
        parameters = list(signature.parameters.values())
        if len(parameters) != 2:
            raise TypeError(f"agent {name!r} must take (ctx, input)")
        if name in AGENTS and AGENTS[name].fn is not fn:
            raise ValueError(f"agent {name!r} is registered twice")
        input_type = parameters[1].annotation
        output_type = signature.return_annotation
        AGENTS[name] = Agent(
            name=name,
            fn=fn,
            input_adapter=TypeAdapter(Any if input_type is inspect.Parameter.empty else input_type),
            output_adapter=TypeAdapter(Any if output_type is inspect.Signature.empty else output_type),
            on_failure=on_failure,
            budget=budget,
            on_limit=on_limit,
        )
        return fn

    return register


def load_agent_modules():
    for module in settings.AGENT_MODULES:
        importlib.import_module(module)


def get_agent(name) -> Agent:
    try:
        return AGENTS[name]
    except KeyError:
        known = ", ".join(sorted(AGENTS)) or "none"
        raise UnknownAgent(f"unknown agent {name!r} (known agents: {known})") from None
