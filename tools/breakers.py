# TEMPORARY (lead's local placeholder, never committed): replaced by the helper's module.
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    probe: bool = False
    until: datetime | None = None
    state: str = "closed"
    reason: str = ""


def check(tool_name):
    return Verdict(True)


def record(tool_name, *, failed, probe=False):
    pass
