"""Issue 11, item 8: four eyes that never fired. Runs from the command line and the demo's
seeded runs now record a person as their starter, and a child run's approvals answer to the
person who started the root of its tree."""

import pytest
from django.core.management import call_command

from runs.engine import advance_run
from runs.models import AuditEntry, Run
from runs.roles import OPERATOR
from tests.conftest import make_user
from tools.models import Approval

pytestmark = pytest.mark.django_db(transaction=True)


def decide_on_the_page(client, user, approval):
    client.force_login(user)
    return client.post(f"/tools/approvals/{approval.id}/decide/",
                       {"decision": "approve", "shown_hash": approval.form_hash}, follow=True).content.decode()


def test_a_run_started_from_the_command_line_whose_child_asks_needs_another_operator(client, operator):
    call_command("start_run", "t_guarded_parent", "--input", '{"value": 1}', "--user", "otto")
    parent = Run.objects.get(agent="t_guarded_parent")
    assert parent.started_by == "user:otto"
    advance_run(parent.id)
    child = Run.objects.get(parent=parent)
    advance_run(child.id)
    approval = Approval.objects.get(run=child)

    page = decide_on_the_page(client, operator, approval)

    assert "Not done: you started this run, and a run&#x27;s starter may not approve its own steps" in page
    assert Approval.objects.get(id=approval.id).status == "pending"
    olga = make_user("olga", OPERATOR)
    assert "Approved: the run goes on" in decide_on_the_page(client, olga, approval)
    assert Approval.objects.get(id=approval.id).decided_by == "user:olga"


def test_the_demo_runs_are_started_by_the_demo_operator_so_admin_approves_them(settings):
    settings.DEBUG = True

    call_command("seed_demo", stdout=open("/dev/null", "w"))

    starters = set(Run.objects.filter(idempotency_key__startswith="demo-").values_list("started_by", flat=True))
    assert starters == {"user:operator"}
    assert AuditEntry.objects.filter(action="start_run", username="operator").count() == Run.objects.count()
