"""The activity page (failures grouped, runs per minute, latency, usage) from real runs advanced
by real workers, the runs list's failure filters, and the Prometheus endpoint /metrics."""

import re

import pytest
from django.test import Client

from runs.actors import Actor
from runs.models import Run, RunStatus
from runs.moves import start_run
from runs.sweeper import last_sweep_at, sweep
from tests.conftest import wait_for

TOKEN = "a-metrics-token-for-the-tests"
VERA = Actor("user", "vera")


def run_until_finished(workers, runs):
    workers.start(scheduler=False)
    wait_for(lambda: not Run.objects.filter(id__in=[run.id for run in runs])
             .exclude(status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED]).exists(),
             what="the runs to finish")


@pytest.fixture
def finished_runs(workers):
    """Two runs that fail at the tool t_fail, one whose own code raises, one that succeeds."""
    runs = [
        start_run("t_failing_tool", {"value": 1}, started_by=VERA),
        start_run("t_failing_tool", {"value": 2}, started_by=VERA),
        start_run("t_contract_breaker", {}, started_by=VERA),
        start_run("t_protocol", {"value": 3}, started_by=VERA),
    ]
    run_until_finished(workers, runs)
    return runs


def viewer_client(viewer):
    client = Client()
    client.force_login(viewer)
    return client


def test_failures_are_grouped_by_error_type_and_tool_with_links_to_their_runs(finished_runs, viewer):
    client = viewer_client(viewer)

    page = client.get("/activity/").content.decode()

    groups = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>\s*<td>(.*?)</td>\s*"
                        r'<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>', page, re.S)
    assert [(kind, re.sub("<[^>]+>", "", tool), hour, day) for kind, tool, hour, day in groups] == [
        ("RuntimeError", "t_fail", "2", "2"),
        ("ValueError", "the agent's own code", "1", "1"),
    ]
    links = re.findall(r'href="(/\?[^"]+)">show the runs', page)
    assert links == ["/?status=failed&amp;error_type=RuntimeError&amp;tool=t_fail",
                     "/?status=failed&amp;error_type=ValueError&amp;tool=%28none%29"]

    tool_failures = client.get(links[0].replace("&amp;", "&")).content.decode()
    own_failures = client.get(links[1].replace("&amp;", "&")).content.decode()
    failing_tool, _, breaker, succeeded = finished_runs
    assert str(failing_tool.id)[:8] in tool_failures and str(breaker.id)[:8] not in tool_failures
    assert str(breaker.id)[:8] in own_failures and str(failing_tool.id)[:8] not in own_failures
    assert str(succeeded.id)[:8] not in tool_failures + own_failures


def test_the_chart_and_the_tables_come_from_the_runs(finished_runs, viewer):
    client = viewer_client(viewer)

    page = client.get("/activity/").content.decode()

    titles = re.findall(r"<title>\d\d:\d\d: (\d+) (started|finished|failed)</title>", page)
    totals = {}
    for n, series in titles:
        totals[series] = totals.get(series, 0) + int(n)
    assert totals == {"started": 4, "finished": 4, "failed": 3}
    assert re.search(r"tool <code>t_fail</code></td><td class=\"num\">2</td>", page)
    assert re.search(r"llm <code>scripted</code></td><td class=\"num\">1</td>", page)
    # t_protocol's one LLM step: 10 + 5 tokens, $0.0001.
    assert re.search(r">t_protocol</a></td><td class=\"num\">1</td><td class=\"num\">15</td><td class=\"num\">\$0.0001</td>", page)


def test_the_runs_page_fetches_the_summary_after_it(finished_runs, viewer):
    client = viewer_client(viewer)

    runs_page = client.get("/").content.decode()
    summary = client.get("/activity/", HTTP_HX_REQUEST="true").content.decode()

    assert 'hx-get="/activity/" hx-trigger="load"' in runs_page
    assert "<svg" not in runs_page
    assert "<svg" in summary and "RuntimeError" in summary
    assert "Step latency" not in summary  # the full page only


def test_an_empty_activity_page_says_so(client, viewer):
    client.force_login(viewer)

    page = client.get("/activity/").content.decode()

    assert "No run failed in the last day." in page
    assert "No run started or finished in the last hour." in page


def test_a_user_without_a_role_may_not_see_the_operations_pages(client, outsider):
    client.force_login(outsider)

    assert client.get("/activity/").status_code == 403
    assert client.get("/workers/").status_code == 403


def test_the_sweeper_records_its_pass(transactional_db):
    sweep()
    first = last_sweep_at()
    sweep()

    assert first is not None and last_sweep_at() > first


# /metrics -------------------------------------------------------------------------------------


def test_metrics_do_not_exist_while_no_token_is_set(client, db, settings):
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_metrics_refuse_a_request_without_the_token(client, db, settings, header):
    settings.METRICS_TOKEN = TOKEN
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}

    response = client.get("/metrics", **extra)

    assert response.status_code == 403
    assert b"agentops_runs" not in response.content


def test_metrics_refuse_a_signed_in_user_without_the_token(client, viewer, settings):
    settings.METRICS_TOKEN = TOKEN
    client.force_login(viewer)

    assert client.get("/metrics").status_code == 403


def test_metrics_give_the_series_with_the_token(finished_runs, settings):
    settings.METRICS_TOKEN = TOKEN
    sweep()

    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert 'agentops_runs{status="failed"} 3.0' in text
    assert "agentops_runs_started_total 4.0" in text
    assert 'agentops_runs_finished_total{status="failed"} 3.0' in text
    assert 'agentops_runs_finished_total{status="succeeded"} 1.0' in text
    assert re.search(r'agentops_step_latency_seconds\{kind="tool",name="t_fail",quantile="0.95"\} \d', text)
    assert "agentops_approvals_pending 0.0" in text
    assert re.search(r'agentops_queue_jobs\{state="queued"\} \d', text)
    assert "agentops_workers 1.0" in text
    assert "agentops_workers_probably_dead 0.0" in text
    assert "agentops_scheduler_up 0.0" in text
    assert re.search(r"agentops_sweeper_last_pass_timestamp_seconds \d", text)
