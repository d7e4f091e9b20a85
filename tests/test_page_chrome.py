"""The pages' small faults (issue 10, fault 12), each seen through the test client.

The Tools page, the navigation, the 403 page, child runs, waiting runs, times, the lease
holder's heartbeat, a refused edit, the status chips and the favicon.
"""

import html
import re
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.utils import timezone

from runs.actors import Actor
from runs.engine import advance_run
from runs.models import Run
from runs.moves import claim, start_run
from tests.agents import TEST
from tools.freeze import set_freeze
from tools.models import Approval, FreezeState
from tools.sync import sync_tools

# advance_run ends as a job does, closing its connection: the rows must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

ONE_FORMAT = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"


def row(page, element_id):
    """The HTML of one table row, by its id."""
    start = page.index(f'<tr id="{element_id}"')
    return page[start:page.index("</tr>", start)]


# The Tools page ------------------------------------------------------------------------------

def test_a_read_says_nothing_about_undo_and_a_write_says_what_undoes_it(client, viewer):
    sync_tools()
    client.force_login(viewer)
    page = client.get("/tools/").content.decode()

    assert "not needed: a read changes nothing" in row(page, "tool-lookup_order")
    assert "irreversible" not in row(page, "tool-lookup_order")
    assert "by reverse_refund" in row(page, "tool-issue_refund")
    assert "irreversible" in row(page, "tool-send_email")


def test_the_mcp_hints_read_alike(client, viewer):
    sync_tools()
    client.force_login(viewer)
    page = client.get("/tools/").content.decode()

    hints = re.findall(r'<code class="(?:on|off)">([^<]*)</code>', page)
    assert hints and all(re.fullmatch(r"(readOnly|destructive|idempotent|openWorld)Hint: (true|false)", hint) for hint in hints)
    assert "readOnlyHint: true" in row(page, "tool-lookup_order")
    assert "readOnlyHint: false" in row(page, "tool-send_email")


def test_the_proving_tools_are_listed_only_when_asked(client, viewer):
    sync_tools()
    client.force_login(viewer)

    page = client.get("/tools/").content.decode()
    assert 'id="tool-chaos_deposit"' not in page and 'id="tool-bench_read"' not in page
    assert 'id="tool-send_email"' in page
    assert "tools that prove the runtime (chaos, benchmarks) are not listed" in page

    everything = client.get("/tools/?all=1").content.decode()
    assert 'id="tool-chaos_deposit"' in everything and 'id="tool-bench_read"' in everything


def test_a_viewer_is_not_sent_to_an_admin_they_cannot_open(client, viewer, admin_user):
    sync_tools()
    client.force_login(viewer)
    assert "/admin/" not in client.get("/tools/").content.decode()
    client.force_login(admin_user)
    assert "/admin/tools/toolpermission/" in client.get("/tools/").content.decode()


# The navigation and the 403 page -------------------------------------------------------------

def test_the_navigation_marks_exactly_the_current_page(client, viewer):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    approval_run = start_run("t_guarded", {"value": 5}, started_by=TEST)
    advance_run(approval_run.id)
    client.force_login(viewer)
    expected = {
        "/": "Runs", f"/runs/{run.id}/": "Runs", "/tools/": "Tools", "/tools/approvals/": "Approvals",
        f"/tools/approvals/{Approval.objects.get().id}/": "Approvals", "/audit/": "Audit", "/demo/": "Demo world",
    }
    for path, item in expected.items():
        page = client.get(path).content.decode()
        current = re.findall(r'<a href="[^"]*" aria-current="page">([^<]*)', page)
        assert current == [item], path


def test_the_403_page_names_the_role_needed(client, viewer, outsider):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    client.force_login(viewer)

    response = client.post(f"/runs/{run.id}/cancel/", {"reason": "no"})
    assert response.status_code == 403
    text = html.unescape(response.content.decode())
    assert "This needs the operator role." in text and "Your account has the viewer role." in text

    text = html.unescape(client.post("/tools/freeze/", {"reason": "x"}).content.decode())
    assert "This needs the admin role." in text

    client.force_login(outsider)
    response = client.get("/")
    assert response.status_code == 403
    text = html.unescape(response.content.decode())
    assert "This needs the viewer role." in text and "Your account has no role." in text


# Runs: children, waits, times, the heartbeat -----------------------------------------------

def test_a_child_run_shows_its_parent_as_a_link_with_the_short_id(client, viewer):
    parent = start_run("t_parent", {"value": 2}, started_by=TEST)
    advance_run(parent.id)
    child = Run.objects.get(parent=parent)
    client.force_login(viewer)
    link = f'run <a href="/runs/{parent.id}/"><code>{str(parent.id)[:8]}</code></a>'

    for page in (client.get(f"/runs/{child.id}/").content.decode(), client.get("/").content.decode()):
        assert link in page
        # The parent's full id only in links and ids, never as text.
        assert str(parent.id) not in re.sub(r"<[^>]*>", "", page)


def test_a_waiting_run_says_in_the_list_what_it_waits_for(client, viewer):
    FreezeState.objects.get_or_create(id=1)
    sleeper = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    guarded = start_run("t_guarded", {"value": 5}, started_by=TEST)
    parent = start_run("t_parent", {"value": 2}, started_by=TEST)
    set_freeze(agent="f_writer", reason="release", actor=Actor("user", "ada"))
    frozen = start_run("f_writer", {"n": 1}, started_by=TEST)
    for run in (sleeper, guarded, parent, frozen):
        advance_run(run.id)
    child = Run.objects.get(parent=parent)
    client.force_login(viewer)
    page = client.get("/").content.decode()

    assert re.search(r'asleep, wakes <time datetime="[^"]+" title="' + ONE_FORMAT + r'">in \d+', row(page, f"run-{sleeper.id}"))
    approval = Approval.objects.get(run=guarded)
    assert f'approval of <a href="/tools/approvals/{approval.id}/">t_irreversible</a>' in row(page, f"run-{guarded.id}")
    assert f'child run <a href="/runs/{child.id}/"><code>{str(child.id)[:8]}</code></a>' in row(page, f"run-{parent.id}")
    assert "the freeze to lift" in row(page, f"run-{frozen.id}")
    assert "waiting-for" not in row(page, f"run-{child.id}")  # queued: it waits for nothing


def test_times_are_shown_in_one_format_and_stored_text_uses_it(client, viewer):
    sleeper = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    guarded = start_run("t_guarded", {"value": 5}, started_by=TEST)
    for run in (sleeper, guarded):
        advance_run(run.id)

    assert re.fullmatch(f"sleeping until {ONE_FORMAT}", Run.objects.get(id=sleeper.id).status_reason)
    assert re.fullmatch(rf"waiting for approval of step 1 \(t_irreversible\), until {ONE_FORMAT}",
                        Run.objects.get(id=guarded.id).status_reason)
    client.force_login(viewer)
    for path in ("/", f"/runs/{sleeper.id}/", "/tools/approvals/"):
        page = client.get(path).content.decode()
        titles = re.findall(r'<time datetime="[^"]+" title="([^"]+)"', page)
        assert titles and all(re.fullmatch(ONE_FORMAT, title) for title in titles), path


def running(owner="worker-that-died"):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    claim(run.id, owner)
    return run


def test_the_lease_holders_heartbeat_age_shows_and_is_flagged_when_late(client, viewer, settings):
    settings.RUN_LEASE_SECONDS = 30  # a beat every 10 s
    fresh, silent = running(), running()
    # The worker holding `silent` last beat 25 s ago: its lease still runs 5 s.
    Run.objects.filter(id=silent.id).update(lease_expires_at=timezone.now() + timedelta(seconds=5))
    client.force_login(viewer)

    page = client.get(f"/runs/{fresh.id}/").content.decode()
    assert re.search(r'class="heartbeat" [^>]*>heartbeat <span class="age">[0-2]</span> s ago', page)
    page = client.get(f"/runs/{silent.id}/").content.decode()
    assert re.search(r'class="heartbeat late" [^>]*>heartbeat <span class="age">2[5-7]</span> s ago', page)
    assert "late, a beat is due every 10 s; the worker may have stopped" in page


# The rest ------------------------------------------------------------------------------------

def test_an_edit_that_fails_the_schema_keeps_the_operators_text(client, admin_user):
    run = start_run("t_guarded", {"value": 5}, started_by=Actor("user", "otto"))
    advance_run(run.id)
    approval = Approval.objects.get(run=run)
    client.force_login(admin_user)
    typed = '{"value": -1,\n "card_number": "***"}'

    response = client.post(f"/tools/approvals/{approval.id}/decide/",
                           {"decision": "approve", "edited_args": typed, "shown_hash": approval.form_hash})

    page = html.unescape(response.content.decode())
    assert "Not done: the edited arguments do not fit 't_irreversible'" in page
    assert f'<textarea name="edited_args" id="edited-args" rows="5">{typed}</textarea>' in page
    assert Approval.objects.get(id=approval.id).status == "pending"


def test_status_chips_at_zero_fold_away(client, viewer):
    run = start_run("t_sleeper", {"seconds": 3600}, started_by=TEST)
    advance_run(run.id)
    client.force_login(viewer)

    page = client.get("/").content.decode()
    assert re.findall(r'data-count="(\w+)">(\d+)<', page) == [("waiting", "1")]
    # The status filtered by stays, at 0, so the filter shows.
    page = client.get("/?status=failed").content.decode()
    assert re.findall(r'data-count="(\w+)">(\d+)<', page) == [("waiting", "1"), ("failed", "0")]


def test_every_page_has_a_favicon(client, viewer):
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
    assert finders.find("favicon.svg")
