"""What Postgres can store of a JSON value, and the visible form of what it cannot.

Postgres refuses a NUL character (U+0000) in text and in jsonb strings and keys, and jsonb
refuses NaN and the infinities. A value holding one cannot be written at all: left alone, the
write fails, the worker stops, and the next worker to claim the run hits the same wall, calling
its tools again each time. So the journal and the run check values before they write them:

- a value the agent receives or returns (a tool's result, the agent's output) is refused, with
  a message naming where the bad part is: changing it would hand the agent, on replay, a value
  other than the one it got live;
- text meant for people (error messages, reasons) and arguments kept for display are stored
  with each NUL written as the six characters \\u0000 (`visible`).
"""

import json
import math

NUL = "\x00"
# How deep a value people or agents hand us may nest. Parsing and validating recurse, and so
# does Postgres: JSON nested thousands deep would fail there with an error of its own.
MAX_DEPTH = 64


def unstorable(value, path="$"):
    """Where value holds what Postgres cannot store, and what, e.g. "a NUL character at
    $.items[2].name"; None if it can all be stored."""
    if isinstance(value, str):
        return f"a NUL character (\\u0000) at {path}" if NUL in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} at {path}, which JSON cannot hold"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and NUL in key:
                return f"a NUL character (\\u0000) in a key of {path}"
            found = unstorable(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = unstorable(item, f"{path}[{index}]")
            if found:
                return found
    return None


def visible(value):
    """value with each NUL written out as \\u0000 and non-finite numbers as text: for what is
    shown to people, never for what an agent receives."""
    if isinstance(value, str):
        return value.replace(NUL, "\\u0000")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {visible(key): visible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [visible(item) for item in value]
    return value


def deeper_than(value, limit=MAX_DEPTH):
    """Whether value nests more than `limit` levels of lists and objects (no recursion)."""
    level = [value]
    for _ in range(limit + 1):
        level = [item for each in level if isinstance(each, (dict, list))
                 for item in (each.values() if isinstance(each, dict) else each)]
        if not level:
            return False
    return True


class NestedTooDeep(json.JSONDecodeError):
    """JSON text nested deeper than MAX_DEPTH (a JSONDecodeError, so that the forms that say
    what is wrong with JSON text say this too)."""

    def __init__(self, text):
        super().__init__(f"nested more than {MAX_DEPTH} levels deep", text, 0)


def loads(text):
    """json.loads for text people type or send: JSON nested too deep is an error that says so,
    where json.loads would raise RecursionError, or give a value too deep to use."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise NestedTooDeep(text) from None
    if deeper_than(value):
        raise NestedTooDeep(text)
    return value
