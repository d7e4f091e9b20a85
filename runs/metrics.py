"""Figures over time, each one aggregate query: runs per minute, failures grouped, step latency,
tokens and cost per agent per day. For the activity page (runs.operations) and /metrics.

Times are the database's: a run started at created_at, finished at finished_at; a step ended
at its outcome row. A step that writes took from its intent to its outcome; a step journaled
only at its end (a read, an LLM call) took from the row before it in the run (or the run's
start), which includes the agent's own work between the two.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, Max, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from runs.listing import NO_TOOL, RunListing, error_type, failed_tool
from runs.models import Run, RunStatus

S = RunStatus
CHART_MINUTES = 60
USAGE_DAYS = 7


@dataclass
class Minute:
    at: datetime
    started: int = 0
    finished: int = 0
    failed: int = 0


def runs_per_minute(now=None) -> list[Minute]:
    """Runs started, finished (any way) and failed in each of the last CHART_MINUTES minutes,
    oldest first; the last is the current minute."""
    now = now or timezone.now()
    current = now.replace(second=0, microsecond=0)
    since = current - timedelta(minutes=CHART_MINUTES - 1)
    minutes = {since + timedelta(minutes=n): Minute(since + timedelta(minutes=n)) for n in range(CHART_MINUTES)}
    started = (Run.objects.filter(created_at__gte=since).annotate(minute=TruncMinute("created_at"))
               .values("minute").annotate(n=Count("id")).order_by())
    for row in started:
        if row["minute"] in minutes:
            minutes[row["minute"]].started = row["n"]
    finished = (Run.objects.filter(finished_at__gte=since).annotate(minute=TruncMinute("finished_at"))
                .values("minute").annotate(n=Count("id"), failed=Count("id", filter=Q(status=S.FAILED))).order_by())
    for row in finished:
        if row["minute"] in minutes:
            minutes[row["minute"]].finished = row["n"]
            minutes[row["minute"]].failed = row["failed"]
    return list(minutes.values())


@dataclass
class FailureGroup:
    error_type: str
    tool: str
    last_hour: int
    last_day: int
    latest: datetime

    @property
    def runs_url_query(self):
        """The runs page's filters for this group's runs."""
        return RunListing(status=S.FAILED, error_type=self.error_type, tool=self.tool or NO_TOOL).querystring()


def failure_groups(now=None) -> list[FailureGroup]:
    """Runs that failed in the last day, by the type of their error and the tool that failed,
    most frequent first."""
    now = now or timezone.now()
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    rows = (
        Run.objects.filter(status=S.FAILED, finished_at__gte=day)
        .annotate(error_type=error_type(), failed_tool=failed_tool())
        .values("error_type", "failed_tool")
        .annotate(last_day=Count("id"), last_hour=Count("id", filter=Q(finished_at__gte=hour)),
                  latest=Max("finished_at"))
        .order_by("-last_day", "-latest")
    )
    return [FailureGroup(row["error_type"], row["failed_tool"], row["last_hour"], row["last_day"], row["latest"])
            for row in rows]


@dataclass
class Latency:
    kind: str
    name: str
    steps: int
    p50: float  # seconds
    p95: float

    @property
    def p50_ms(self):
        return self.p50 * 1000

    @property
    def p95_ms(self):
        return self.p95 * 1000


STEP_LATENCY_SQL = """
WITH ended AS (
    SELECT o.kind, o.name,
           EXTRACT(EPOCH FROM o.created_at - COALESCE(
               (SELECT i.created_at FROM runs_journalentry i
                WHERE i.run_id = o.run_id AND i.seq = o.seq AND i.attempt = o.attempt AND i.phase = 'intent'),
               (SELECT p.created_at FROM runs_journalentry p
                WHERE p.run_id = o.run_id AND (p.seq, p.attempt, p.id) < (o.seq, o.attempt, o.id)
                ORDER BY p.seq DESC, p.attempt DESC, p.id DESC LIMIT 1),
               r.started_at)) AS took
    FROM runs_journalentry o JOIN runs_run r ON r.id = o.run_id
    WHERE o.phase = 'outcome' AND o.kind IN ('tool', 'llm') AND o.status IN ('succeeded', 'failed')
      AND o.created_at >= %(since)s
)
SELECT kind, name, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY took),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY took)
FROM ended WHERE took IS NOT NULL
GROUP BY kind, name
ORDER BY kind, name
"""


def step_latency(since) -> list[Latency]:
    """p50 and p95 of the tool and LLM steps that ended since `since`, per tool or provider."""
    with connection.cursor() as cursor:
        cursor.execute(STEP_LATENCY_SQL, {"since": since})
        return [Latency(kind, name, steps, max(p50, 0.0), max(p95, 0.0))
                for kind, name, steps, p50, p95 in cursor.fetchall()]


@dataclass
class Usage:
    agent: str
    day: datetime
    llm_steps: int
    tokens: int
    cost_usd: float


USAGE_SQL = """
SELECT r.agent, date_trunc('day', j.created_at) AS day, count(*),
       COALESCE(SUM(COALESCE((j.result->>'input_tokens')::bigint, 0)
                    + COALESCE((j.result->>'output_tokens')::bigint, 0)), 0),
       COALESCE(SUM((j.result->>'cost_usd')::numeric), 0)
FROM runs_journalentry j JOIN runs_run r ON r.id = j.run_id
WHERE j.kind = 'llm' AND j.phase = 'outcome' AND j.status = 'succeeded' AND j.created_at >= %(since)s
GROUP BY r.agent, day
ORDER BY day DESC, r.agent
"""


def usage_per_agent_per_day(now=None) -> list[Usage]:
    """Tokens and cost of each agent's LLM steps, per day (UTC), for the last USAGE_DAYS days
    (the same sums as the runs page's Tokens and Cost columns)."""
    now = now or timezone.now()
    since = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=USAGE_DAYS - 1)
    with connection.cursor() as cursor:
        cursor.execute(USAGE_SQL, {"since": since})
        return [Usage(agent, day, steps, int(tokens), float(cost)) for agent, day, steps, tokens, cost in cursor.fetchall()]


def runs_by_status() -> dict[str, int]:
    """Every status, with 0 for those no run has."""
    found = dict(Run.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {status: found.get(status, 0) for status in RunStatus.values}


@dataclass
class Chart:
    """The runs-per-minute chart, laid out for an SVG drawn by the template."""

    minutes: list
    width: int
    height: int
    peak: int
    bars: list  # (x, y, width, height, css class, title)


CHART_WIDTH, CHART_HEIGHT = 720, 120
SERIES = (("started", "bar-started"), ("finished", "bar-finished"), ("failed", "bar-failed"))


def minute_chart(minutes: list[Minute]) -> Chart:
    peak = max([max(m.started, m.finished) for m in minutes] + [1])
    slot = CHART_WIDTH / len(minutes)
    bar = slot / (len(SERIES) + 1)
    bars = []
    for index, minute in enumerate(minutes):
        for offset, (field, css) in enumerate(SERIES):
            value = getattr(minute, field)
            if not value:
                continue
            height = max(1.0, value / peak * (CHART_HEIGHT - 4))
            bars.append((
                round(index * slot + offset * bar, 1), round(CHART_HEIGHT - height, 1), round(bar, 1),
                round(height, 1), css, f"{timezone.localtime(minute.at):%H:%M}: {value} {field}",
            ))
    return Chart(minutes, CHART_WIDTH, CHART_HEIGHT, peak, bars)
