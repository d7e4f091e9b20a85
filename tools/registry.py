"""The tool registry: `@tool` turns a plain function into a tool agents can call through ctx.

A tool declares its effect (read, write or delete; undeclared means delete, the safe default),
whether its downstream dedupes on the idempotency key it is given, whether it reaches the open
world, the compensation that would undo it (none: irreversible), which argument fields are
sensitive (kept for replay, shown redacted), optionally a reconcile hook that
answers "did the call with key K happen?" for a step left in doubt by a crash, and its retry
policy (attempts, backoff, timeout, transient errors: runs/retries.py).

Each registered tool also has a row in the database (tools.models.Tool), kept in step with the
code by tools.sync, so admins can manage it.
"""

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from runs.agents import describe
from runs.retries import READ_POLICY, WRITE_POLICY, InvalidRetryPolicy, RetryPolicy

EFFECTS = ("read", "write", "delete")
# The effects that change the world: their steps record an intent first, the freeze stops
# them, and they can be undone only by a compensation.
WRITING_EFFECTS = frozenset({"write", "delete"})
# How long an approval request waits for a person when its tool's row does not say.
DEFAULT_APPROVAL_EXPIRY_SECONDS = 3600


class ContractViolation(Exception):
    """A request or a result breaks a tool's contract; the step fails and is never retried."""


@dataclass(frozen=True)
class Reconciled:
    """What a reconcile hook found: the call happened (with its result), or it did not."""

    happened: bool
    result: Any = None


@dataclass(frozen=True)
class Compensation:
    """How to undo a write: another tool, and its arguments built from the original's."""

    tool: str
    build_args: Callable[[dict, Any], dict]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    fn: Callable
    input_model: type[BaseModel]
    effect: str
    idempotent: bool
    description: str
    # reconcile(args, idempotency_key) -> Reconciled, or None when it cannot tell.
    reconcile: Callable | None
    takes_key: bool
    open_world: bool = True
    compensation: Compensation | None = None
    sensitive: frozenset = frozenset()
    output_model: type[BaseModel] | None = None
    # False for tools that exist to prove the runtime (the chaos and benchmark tools): the
    # Tools page lists them only when asked.
    listed: bool = True
    retry: RetryPolicy = READ_POLICY
    # Whether its calls pass its circuit breaker (tools/breakers.py), shared by all workers.
    breaker: bool = True

    @property
    def repeatable(self):
        """A second call cannot do harm: a read, or a write whose downstream dedupes on the key."""
        return self.effect == "read" or self.idempotent

    @property
    def reversible(self):
        return self.compensation is not None

    @property
    def writes(self):
        return self.effect in WRITING_EFFECTS

    @property
    def compensation_tool(self):
        """The name of the tool that undoes this one, or "" for an irreversible tool."""
        return self.compensation.tool if self.compensation else ""

    def input_schema(self):
        return self.input_model.model_json_schema()

    def parse(self, arguments):
        """The arguments as the tool's input model; ContractViolation names the field."""
        try:
            return self.input_model.model_validate(arguments)
        except ValidationError as error:
            raise ContractViolation(f"arguments for {self.name!r} are invalid: {describe(error)}") from None

    def call(self, args: BaseModel, idempotency_key: str):
        """Make the call; a tool with an output model must return what it promises (a result
        that does not fit is a contract error naming the field: the call itself did happen)."""
        result = self.fn(args, idempotency_key=idempotency_key) if self.takes_key else self.fn(args)
        if self.output_model is None:
            return result
        try:
            return self.output_model.model_validate(result).model_dump(mode="json")
        except ValidationError as error:
            raise ContractViolation(
                f"the result of {self.name!r} does not fit its output model: {describe(error)}"
            ) from None


TOOLS: dict[str, ToolSpec] = {}


def tool(
    name=None, *, effect="delete", idempotent=False, reconcile=None, description=None,
    open_world=True, compensation=None, sensitive=(), output_model=None, listed=True, retry=None,
    breaker=True,
):
    """Register a tool: `def fn(args: Model, *, idempotency_key: str) -> JSON-able result`.

    `retry` (a runs.retries.RetryPolicy) says how its failed calls are tried again; without it,
    the default for its effect. A write that cannot dedupe is retried only when the error proves
    the call never happened, whatever its policy (runs.retries.decide). breaker=False keeps its
    calls out of the circuit breaker (a tool that must be called whatever its recent failures)."""
    if effect not in EFFECTS:
        raise ValueError(f"effect must be one of {', '.join(EFFECTS)}, not {effect!r}")
    if compensation is not None and effect == "read":
        raise ValueError("a read changes nothing, so it has no compensation")

    def register(fn):
        tool_name = name or fn.__name__
        parameters = list(inspect.signature(fn).parameters.values())
        annotation = parameters[0].annotation if parameters else inspect.Parameter.empty
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise TypeError(f"tool {tool_name!r}: its first parameter must be a pydantic model")
        if tool_name in TOOLS and TOOLS[tool_name].fn is not fn:
            raise ValueError(f"tool {tool_name!r} is registered twice")
        takes_key = any(p.name == "idempotency_key" for p in parameters)
        if idempotent and not takes_key:
            raise TypeError(
                f"tool {tool_name!r} says it is idempotent but takes no idempotency_key: "
                "a step in doubt runs again, so its downstream must dedupe on that key"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidRetryPolicy(f"tool {tool_name!r}: retry must be a runs.retries.RetryPolicy, not {retry!r}")
        policy = (retry or (READ_POLICY if effect == "read" else WRITE_POLICY)).checked(f"tool {tool_name!r}")
        unknown = set(sensitive) - set(annotation.model_fields)
        if unknown:
            raise ValueError(f"tool {tool_name!r}: sensitive fields {sorted(unknown)} are not in its input model")
        TOOLS[tool_name] = ToolSpec(
            name=tool_name,
            fn=fn,
            input_model=annotation,
            effect=effect,
            idempotent=idempotent,
            description=description or inspect.getdoc(fn) or "",
            reconcile=reconcile,
            takes_key=takes_key,
            open_world=open_world,
            compensation=compensation,
            sensitive=frozenset(sensitive),
            output_model=output_model,
            listed=listed,
            retry=policy,
            breaker=bool(breaker),
        )
        return fn

    return register


# What people see in place of a secret. The redaction itself reads the tool's database row too,
# so a tool that has left the code keeps its secrets hidden: tools.models.Redactor.
REDACTED = "***"
