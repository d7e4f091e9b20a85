"""Tools in the database, their permissions and the precedence of rules."""

import pytest

from runs.engine import advance_run
from runs.models import AuditEntry, JournalEntry, Run
from runs.moves import start_run
from tests.agents import CALLS, TEST
from pydantic import BaseModel

from tools.models import Rule, Tool, ToolPermission
from tools.registry import Compensation, tool
from tools.sync import sync_tools

pytestmark = pytest.mark.django_db

ALLOW, APPROVE, DENY = Rule.ALLOW, Rule.REQUIRE_APPROVAL, Rule.DENY


def make_tool(name="t", effect="write", compensation=""):
    return Tool.objects.create(name=name, effect=effect, compensation=compensation)


@pytest.mark.parametrize(
    ("effect", "compensation", "rules", "agent", "expected"),
    [
        # No rule: the default by effect.
        ("read", "", [], "a", (ALLOW, None, "default for a read")),
        ("write", "undo", [], "a", (ALLOW, None, "default for a reversible write")),
        ("write", "", [], "a", (APPROVE, None, "default for a write")),
        ("delete", "", [], "a", (APPROVE, None, "default for a delete")),
        # Global rules replace the default.
        ("delete", "", [("", ALLOW, None)], "a", (ALLOW, None, "global rule")),
        ("read", "", [("", DENY, None)], "a", (DENY, None, "global rule")),
        # Among rules of one level, deny beats require approval beats allow.
        ("write", "", [("", ALLOW, None), ("", APPROVE, None)], "a", (APPROVE, None, "global rule")),
        ("write", "", [("", ALLOW, None), ("", DENY, None), ("", APPROVE, None)], "a", (DENY, None, "global rule")),
        # An agent's own rule beats the global one, whichever is stricter.
        ("write", "", [("", DENY, None), ("a", ALLOW, None)], "a", (ALLOW, None, "rule for agent 'a'")),
        ("write", "", [("", ALLOW, None), ("a", DENY, None)], "a", (DENY, None, "rule for agent 'a'")),
        # Another agent's rule does not apply.
        ("write", "", [("", ALLOW, None), ("b", DENY, None)], "a", (ALLOW, None, "global rule")),
        # The smallest cap of the deciding level holds.
        ("read", "", [("", ALLOW, 10), ("", ALLOW, 3)], "a", (ALLOW, 3, "global rule")),
        ("read", "", [("", ALLOW, 3), ("a", ALLOW, 50)], "a", (ALLOW, 50, "rule for agent 'a'")),
    ],
)
def test_the_precedence_of_rules(effect, compensation, rules, agent, expected):
    target = make_tool(effect=effect, compensation=compensation)
    for rule_agent, rule, cap in rules:
        ToolPermission.objects.create(tool=target, agent=rule_agent, rule=rule, max_calls_per_run=cap)

    assert tuple(ToolPermission.objects.decide(target, agent)) == expected


def test_every_registered_tool_has_a_row_with_its_annotations():
    sync_tools()

    refund = Tool.objects.get(name="issue_refund")
    assert (refund.effect, refund.idempotent, refund.compensation) == ("write", True, "reverse_refund")
    assert refund.annotations == {
        "readOnlyHint": False, "destructiveHint": False, "idempotentHint": True, "openWorldHint": True,
    }
    assert Tool.objects.get(name="lookup_order").annotations["readOnlyHint"] is True
    assert refund.input_schema["required"] == ["order_id", "amount_cents"]


def test_a_tool_gone_from_the_code_is_kept_and_marked():
    Tool.objects.create(name="retired_tool", effect="delete")

    sync_tools()

    assert Tool.objects.get(name="retired_tool").registered is False
    assert Tool.objects.get(name="send_email").registered is True


class Secret(BaseModel):
    card: str


def charge_card(args: Secret) -> dict:
    return {}


def test_the_registry_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match=r"sensitive fields \['pin'\] are not in its input model"):
        tool("bad_sensitive", effect="write", sensitive=["pin"])(charge_card)
    with pytest.raises(ValueError, match="a read changes nothing, so it has no compensation"):
        tool("bad_read", effect="read", compensation=Compensation("x", lambda a, r: {}))
    with pytest.raises(ValueError, match="effect must be one of read, write, delete, not 'update'"):
        tool("bad_effect", effect="update")


def test_the_tools_page_shows_effects_annotations_and_rules(client, viewer):
    sync_tools()
    ToolPermission.objects.create(tool=Tool.objects.get(name="send_email"), agent="refund_customer", rule=ALLOW)
    client.force_login(viewer)

    page = client.get("/tools/").content.decode()

    assert 'id="tool-send_email"' in page
    assert "irreversible" in page
    assert "refund_customer: <span class=\"rule rule-allow\">allow</span>" in page
    assert "default for a write" in page
    assert "<code class=\"on\">readOnlyHint: true</code>" in page


def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_a_permission_change_in_the_admin_is_audited_with_old_and_new(client, admin_user):
    sync_tools()
    email = Tool.objects.get(name="send_email")
    client = admin_client(client, admin_user)

    response = client.post("/admin/tools/toolpermission/add/", {
        "tool": email.id, "agent": "", "rule": "allow", "max_calls_per_run": "3", "note": "mail is cheap",
    })
    assert response.status_code == 302, response.content
    permission = ToolPermission.objects.get()
    client.post(f"/admin/tools/toolpermission/{permission.id}/change/", {
        "tool": email.id, "agent": "", "rule": "deny", "max_calls_per_run": "", "note": "mail is off",
    })
    client.post(f"/admin/tools/toolpermission/{permission.id}/delete/", {"post": "yes"})

    entries = list(AuditEntry.objects.order_by("id").values_list("username", "action", "details"))
    assert [(user, action) for user, action, _ in entries] == [
        ("ada", "add_permission"), ("ada", "change_permission"), ("ada", "delete_permission"),
    ]
    assert entries[1][2]["old"]["rule"] == "allow" and entries[1][2]["new"]["rule"] == "deny"
    assert entries[2][2]["old"]["note"] == "mail is off" and entries[2][2]["new"] is None


def test_bad_input_in_the_permission_form_names_the_field(client, admin_user):
    sync_tools()
    client = admin_client(client, admin_user)

    response = client.post("/admin/tools/toolpermission/add/", {
        "tool": Tool.objects.get(name="send_email").id, "agent": "", "rule": "sometimes", "max_calls_per_run": "-2",
    })

    page = response.content.decode()
    assert "Select a valid choice. sometimes is not one of the available choices." in page
    assert "Ensure this value is greater than or equal to 0." in page
    assert not ToolPermission.objects.exists() and not AuditEntry.objects.exists()


def test_an_operator_cannot_change_permissions(client, operator):
    sync_tools()
    operator.is_staff = True  # even with a way into the admin, the role lacks the permission
    operator.save()
    client.force_login(operator)

    response = client.post("/admin/tools/toolpermission/add/", {
        "tool": Tool.objects.get(name="send_email").id, "agent": "", "rule": "allow",
    })

    assert response.status_code == 403
    assert not ToolPermission.objects.exists()
    assert not AuditEntry.objects.exists()


# The engine applies them.


def rule(tool_name, rule_value, agent="", cap=None):
    sync_tools()
    return ToolPermission.objects.create(tool=Tool.objects.get(name=tool_name), agent=agent, rule=rule_value,
                                         max_calls_per_run=cap)


@pytest.mark.django_db(transaction=True)
def test_a_denied_tool_is_not_called_and_the_agent_receives_why():

    rule("t_plain", DENY)
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)

    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert run.status == "failed"
    assert run.error == {"type": "permission_denied", "message": "tool 't_plain' is denied to agent 't_protocol' (global rule)"}
    assert CALLS["t_plain"] == 0
    refused = JournalEntry.objects.get(run=run, seq=4)
    assert (refused.phase, refused.status) == ("outcome", "failed")  # no intent: nothing started


@pytest.mark.django_db(transaction=True)
def test_an_agents_own_allow_beats_a_global_deny_in_the_engine():

    rule("t_plain", DENY)
    rule("t_plain", ALLOW, agent="t_protocol")
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)

    advance_run(run.id)

    assert Run.objects.get(id=run.id).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_disabled_tool_is_a_contract_error():

    sync_tools()
    Tool.objects.filter(name="t_read").update(enabled=False)
    run = start_run("t_protocol", {"value": 1}, started_by=TEST)

    advance_run(run.id)

    assert Run.objects.get(id=run.id).error == {"type": "contract", "message": "tool 't_read' is disabled"}


@pytest.mark.django_db(transaction=True)
def test_a_cap_on_calls_fails_the_run_with_a_budget_error():

    rule("f_read", ALLOW, cap=2)
    run = start_run("f_writer", {"n": 3}, started_by=TEST)

    advance_run(run.id)

    run = Run.objects.get(id=run.id)
    assert run.status == "failed"
    assert run.error["type"] == "budget"
    assert run.error["message"].startswith("budget exceeded: tool 'f_read' may be called 2 times a run (global rule); this was call 3")


@pytest.mark.django_db(transaction=True)
def test_a_result_that_breaks_the_output_model_is_a_contract_error_naming_the_field():

    run = start_run("t_receipts", {"value": 1}, started_by=TEST)
    advance_run(run.id)

    assert Run.objects.get(id=run.id).output == (
        "contract: the result of 't_bad_receipt' does not fit its output model: receipt_id: Field required"
    )


def test_a_rule_for_an_agent_that_does_not_exist_is_refused(client, admin_user):
    sync_tools()
    client.force_login(admin_user)

    response = client.post("/admin/tools/toolpermission/add/", {
        "tool": Tool.objects.get(name="send_email").id, "agent": "refund_custmer", "rule": "allow",
    })

    assert "there is no agent &#x27;refund_custmer&#x27;" in response.content.decode()
    assert not ToolPermission.objects.exists()


def test_an_approval_expiry_under_a_minute_is_refused(client, admin_user):
    sync_tools()
    email = Tool.objects.get(name="send_email")
    client.force_login(admin_user)

    response = client.post(f"/admin/tools/tool/{email.id}/change/", {
        "enabled": "on", "approval_expiry_seconds": "0",
        "permissions-TOTAL_FORMS": "0", "permissions-INITIAL_FORMS": "0",
    })

    assert "an approval needs at least 60 seconds to be seen" in response.content.decode()
