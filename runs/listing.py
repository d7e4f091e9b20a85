"""The runs page's query: filters, search, keyset pages, counts per status.

Shared by the view and the live consumer, so the page and its live updates agree.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from urllib.parse import urlencode

from django.db.models import BooleanField, CharField, Count, IntegerField, OuterRef, Subquery, TextField, Value
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce

from runs.agents import AGENTS
from runs.models import JournalEntry, ParkedBy, Run, RunStatus

PAGE_SIZE = 50
# A failure group's runs with no failed tool step (the agent's own code raised): ?tool=(none).
NO_TOOL = "(none)"

# Tokens and cost of a run: the sums over its LLM steps' journaled responses.
TOKENS_SQL = """
    SELECT COALESCE(SUM(COALESCE((j.result->>'input_tokens')::bigint, 0)
                        + COALESCE((j.result->>'output_tokens')::bigint, 0)), 0)
    FROM runs_journalentry j
    WHERE j.run_id = runs_run.id AND j.kind = 'llm' AND j.phase = 'outcome' AND j.status = 'succeeded'
"""
COST_SQL = """
    SELECT COALESCE(SUM((j.result->>'cost_usd')::numeric), 0)
    FROM runs_journalentry j
    WHERE j.run_id = runs_run.id AND j.kind = 'llm' AND j.phase = 'outcome' AND j.status = 'succeeded'
"""

# The tool of the approval request a waiting run waits for (the list says "approval of TOOL").
WAITING_TOOL_SQL = """
    SELECT a.tool FROM tools_approval a
    WHERE a.id = (CASE WHEN runs_run.wait_kind = 'approval' THEN runs_run.wait_ref::bigint END)
"""


@dataclass
class RunListing:
    status: str = ""
    # What parked a run that needs attention (runs.models.ParkedBy): a budget, a loop, retries.
    parked: str = ""
    agent: str = ""
    q: str = ""
    # A failure group (runs.metrics.failure_groups): the error's type, the tool that failed.
    error_type: str = ""
    tool: str = ""
    after: tuple[datetime, uuid.UUID] | None = None
    error: str = ""

    @classmethod
    def from_params(cls, params):
        listing = cls(
            status=params.get("status", "").strip(),
            parked=params.get("parked", "").strip(),
            agent=params.get("agent", "").strip(),
            q=params.get("q", "").strip()[:200],
            error_type=params.get("error_type", "").strip()[:200],
            tool=params.get("tool", "").strip()[:200],
        )
        problems = []
        # The pages refuse a NUL with a 400 (runs/requests.py); a live socket's query string
        # reaches here directly: leave that filter out, and say so.
        for name in ("status", "parked", "agent", "q", "error_type", "tool"):
            if "\x00" in getattr(listing, name):
                problems.append(f"the filter {name!r} holds a NUL character, so it is left out")
                setattr(listing, name, "")
        if listing.status and listing.status not in RunStatus.values:
            problems.append(f"there is no status {listing.status!r}")
            listing.status = ""
        if listing.parked and listing.parked not in ParkedBy.values:
            problems.append(f"nothing parks a run by {listing.parked!r} (only {', '.join(ParkedBy.values)})")
            listing.parked = ""
        cursor = params.get("after", "")
        if cursor:
            try:
                moment, run_id = cursor.rsplit("~", 1)
                # In UTC, as the database compares it: an offset that leaves the calendar
                # (year 1 at +23:59) fails here, not in the query.
                moment = datetime.fromisoformat(moment).astimezone(dt_timezone.utc)
                listing.after = (moment, uuid.UUID(run_id))
            except (ValueError, OverflowError):
                problems.append("the page link is not valid, so this is the first page")
        listing.error = "; ".join(problems)
        return listing

    @property
    def failed_in_agent_code(self):
        return self.tool == NO_TOOL

    @property
    def is_first_page(self):
        return self.after is None

    def filtered(self, with_status=True):
        runs = Run.objects.all()
        if with_status and self.status:
            runs = runs.filter(status=self.status)
        if with_status and self.parked:
            runs = runs.filter(parked_by=self.parked)
        if self.agent:
            runs = runs.filter(agent=self.agent)
        if self.q:
            runs = self._search(runs)
        if self.error_type:
            runs = runs.alias(error_type=error_type()).filter(error_type=self.error_type)
        if self.tool:
            runs = runs.alias(failed_tool=failed_tool()).filter(failed_tool="" if self.tool == NO_TOOL else self.tool)
        return runs

    def _search(self, runs):
        try:
            return runs.filter(id=uuid.UUID(self.q))
        except ValueError:
            return runs.alias(input_text=Cast("input", output_field=TextField())).filter(
                input_text__icontains=self.q
            )

    def page(self):
        """The runs of this page (newest first) and the cursor of the next page, or None."""
        runs = self.filtered()
        if self.after:
            runs = runs.alias(
                before=RawSQL("(runs_run.created_at, runs_run.id) < (%s, %s)", self.after,
                              output_field=BooleanField())
            ).filter(before=True)
        runs = list(with_figures(runs.order_by("-created_at", "-id"))[: PAGE_SIZE + 1])
        next_cursor = None
        if len(runs) > PAGE_SIZE:
            runs = runs[:PAGE_SIZE]
            last = runs[-1]
            next_cursor = f"{last.created_at.isoformat()}~{last.id}"
        return runs, next_cursor

    def one(self, run_id):
        """The run as a row of this page would show it, or None if the filters exclude it."""
        return with_figures(self.filtered().filter(id=run_id)).first()

    def counts(self):
        """Runs per status under the other filters, every status listed."""
        found = dict(self.filtered(with_status=False).values_list("status").annotate(n=Count("id")).order_by())
        return [(status, label, found.get(status, 0)) for status, label in RunStatus.choices]

    def parked_counts(self):
        """Runs parked by each kind of limit under the other filters, every kind listed."""
        found = dict(self.filtered(with_status=False).exclude(parked_by="").values_list("parked_by")
                     .annotate(n=Count("id")).order_by())
        return [(kind, found.get(kind, 0)) for kind in ParkedBy.values]

    def querystring(self, **changes):
        params = {"status": self.status, "parked": self.parked, "agent": self.agent, "q": self.q,
                  "error_type": self.error_type, "tool": self.tool}
        params.update(changes)
        return urlencode({key: value for key, value in params.items() if value})

    @property
    def without_status(self):
        """The query string less its status and parked filters: what the count links add to."""
        return self.querystring(status="", parked="")

    @staticmethod
    def agents():
        return sorted(AGENTS)


def error_type():
    """The type of a failed run's error ({"type": ..., "message": ...})."""
    return Coalesce(KeyTextTransform("type", "error"), Value(""), output_field=CharField())


def failed_tool():
    """The tool of a run's last failed tool step, or "" (the agent's own code failed)."""
    return Coalesce(
        Subquery(
            JournalEntry.objects.filter(
                run=OuterRef("pk"), kind=JournalEntry.Kind.TOOL, phase=JournalEntry.Phase.OUTCOME,
                status=JournalEntry.Status.FAILED,
            ).order_by("-seq", "-attempt", "-id").values("name")[:1]
        ),
        Value(""), output_field=CharField(),
    )


def with_figures(runs):
    """Each run with its step count, tokens and cost, from its journal, and the tool whose
    approval it waits for."""
    return runs.annotate(
        step_count=Subquery(
            JournalEntry.objects.filter(run=OuterRef("pk")).order_by("-seq").values("seq")[:1],
            output_field=IntegerField(),
        ),
        tokens=RawSQL(TOKENS_SQL, []),
        cost_usd=RawSQL(COST_SQL, []),
        waiting_tool=RawSQL(WAITING_TOOL_SQL, [], output_field=TextField()),
    )
