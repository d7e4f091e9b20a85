"""The operations pages: workers and queue, activity (failures grouped, runs per minute, step
latency, tokens and cost), and the Prometheus endpoint /metrics.

They only read. Every figure comes from runs.fleet (Redis, as RQ keeps it), runs.metrics
(aggregate queries) and runs.sweeper.last_sweep_at.
"""

import hmac
import logging
from datetime import timedelta

import redis

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from runs import fleet, metrics
from runs.models import FINISHED
from runs.sweeper import last_sweep_at
from runs.roles import permission_required
from tools.models import Approval, ApprovalStatus

log = logging.getLogger(__name__)

# The workers page asks again this often (htmx polling: one request, no websocket to keep).
WORKERS_REFRESH_SECONDS = 2
# The activity summary on the runs page asks again this often.
ACTIVITY_REFRESH_SECONDS = 30


def sweeper_state(now):
    """When the sweeper last passed, and whether that is longer ago than it should be."""
    at = last_sweep_at()
    late_after = timedelta(seconds=3 * settings.SWEEP_INTERVAL_SECONDS + 5)
    return {"at": at, "late": at is None or now - at > late_after, "interval": settings.SWEEP_INTERVAL_SECONDS}


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def workers_page(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    context = {"refresh_seconds": WORKERS_REFRESH_SECONDS, "now": now}
    try:
        context.update(workers=fleet.workers(), depth=fleet.queue_depth(), scheduler=fleet.scheduler(),
                       sweeper=sweeper_state(now))
    except redis.RedisError as error:
        # Workers, queue and scheduler live in Redis: say so, and keep asking.
        log.warning("the workers page could not read Redis: %s", error)
        context["redis_error"] = str(error)
    template = "runs/workers.html#live" if request.htmx else "runs/workers.html"
    return render(request, template, context)


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def activity_page(request: HttpRequest) -> HttpResponse:
    """The whole page; for htmx (the runs page's summary), only its failures and its chart."""
    now = timezone.now()
    context = {
        "failures": metrics.failure_groups(now),
        "chart": metrics.minute_chart(metrics.runs_per_minute(now)),
        "refresh_seconds": ACTIVITY_REFRESH_SECONDS,
    }
    if request.htmx:
        return render(request, "runs/activity.html#summary", context)
    context.update(latency=metrics.step_latency(now - timedelta(hours=1)),
                   usage=metrics.usage_per_agent_per_day(now))
    return render(request, "runs/activity.html", context)


def _bearer_token_matches(request) -> bool:
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {settings.METRICS_TOKEN}"
    return hmac.compare_digest(given.encode(), expected.encode())


@login_not_required  # Prometheus does not log in: it sends the bearer token METRICS_TOKEN.
@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    if not settings.METRICS_TOKEN:
        raise Http404("the metrics endpoint is off: set METRICS_TOKEN to turn it on")
    if not _bearer_token_matches(request):
        return HttpResponseForbidden("send the header Authorization: Bearer METRICS_TOKEN\n", content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Figures())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class Figures:
    """The figures for Prometheus, read afresh from Postgres and Redis at each scrape (so every
    web process answers the same, and nothing is kept between scrapes)."""

    def collect(self):
        now = timezone.now()
        by_status = metrics.runs_by_status()
        runs = GaugeMetricFamily("agentops_runs", "Runs by status now.", labels=["status"])
        for status, n in by_status.items():
            runs.add_metric([status], n)
        yield runs
        yield CounterMetricFamily("agentops_runs_started", "Runs ever started.", value=sum(by_status.values()))
        finished = CounterMetricFamily("agentops_runs_finished", "Runs ever finished, by how.", labels=["status"])
        for status in sorted(FINISHED):
            finished.add_metric([status], by_status[status])
        yield finished

        latency = GaugeMetricFamily(
            "agentops_step_latency_seconds",
            "Step latency over the steps that ended in the last hour (see runs/metrics.py).",
            labels=["kind", "name", "quantile"],
        )
        for row in metrics.step_latency(now - timedelta(hours=1)):
            latency.add_metric([row.kind, row.name, "0.5"], row.p50)
            latency.add_metric([row.kind, row.name, "0.95"], row.p95)
        yield latency

        yield GaugeMetricFamily("agentops_approvals_pending", "Approval requests waiting for a person.",
                                value=Approval.objects.filter(status=ApprovalStatus.PENDING).count())
        try:
            yield from self.collect_from_redis()
            redis_up = 1
        except redis.RedisError:
            # Redis is away: the series read from it are missing from this scrape, and this
            # one says why (a scrape that fails would say nothing at all).
            redis_up = 0
        yield GaugeMetricFamily("agentops_redis_up", "1 when Redis answered this scrape.", value=redis_up)

    def collect_from_redis(self):
        """The series read from Redis: the queue, the workers, the scheduler, the sweeper."""
        depth = fleet.queue_depth()
        queue = GaugeMetricFamily("agentops_queue_jobs", "Jobs in the run queue and its registries.", labels=["state"])
        for state in ("queued", "scheduled", "started", "failed"):
            queue.add_metric([state], getattr(depth, state))
        yield queue
        found = fleet.workers()
        yield GaugeMetricFamily("agentops_workers", "Workers registered for the run queue.", value=len(found))
        yield GaugeMetricFamily("agentops_workers_probably_dead", "Workers whose heartbeat or lease lapsed.",
                                value=sum(1 for worker in found if worker.probably_dead))
        scheduler = fleet.scheduler()
        yield GaugeMetricFamily("agentops_scheduler_up", "1 when a live RQ scheduler holds the queue's lock.",
                                value=int(scheduler is not None and not scheduler.silent))
        swept = last_sweep_at()
        if swept is not None:
            yield GaugeMetricFamily("agentops_sweeper_last_pass_timestamp_seconds",
                                    "When the sweeper's last pass ended (Unix time).", value=swept.timestamp())
