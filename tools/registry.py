"""The tool registry: `@tool` turns a plain function into a tool agents can call through ctx.

A tool declares its effect (read, write or delete; undeclared means delete, the safe default),
whether its downstream dedupes on the idempotency key it is given, whether it reaches the open
world, the compensation that would undo it (none: irreversible), which argument fields are
sensitive (kept for replay, shown redacted), a timeout, and optionally a reconcile hook that
answers "did the call with key K happen?" for a step left in doubt by a crash.

Each registered tool also has a row in the database (tools.models.Tool), kept in step with the
code by tools.sync, so admins can manage it.
"""

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

EFFECTS = ("read", "write", "delete")


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
    timeout_seconds: float | None = None
    output_model: type[BaseModel] | None = None

    @property
    def reversible(self):
        return self.compensation is not None

    def input_schema(self):
        return self.input_model.model_json_schema()

    def call(self, args: BaseModel, idempotency_key: str):
        if self.takes_key:
            return self.fn(args, idempotency_key=idempotency_key)
        return self.fn(args)


TOOLS: dict[str, ToolSpec] = {}


def tool(
    name=None, *, effect="delete", idempotent=False, reconcile=None, description=None,
    open_world=True, compensation=None, sensitive=(), timeout_seconds=None, output_model=None,
):
    """Register a tool: `def fn(args: Model, *, idempotency_key: str) -> JSON-able result`."""
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
            timeout_seconds=timeout_seconds,
            output_model=output_model,
        )
        return fn

    return register


REDACTED = "***"


def redact(tool_name, args):
    """The arguments as people may see them: the tool's sensitive fields replaced by ***."""
    spec = TOOLS.get(tool_name)
    if not spec or not spec.sensitive or not isinstance(args, dict):
        return args
    return {key: (REDACTED if key in spec.sensitive else value) for key, value in args.items()}
