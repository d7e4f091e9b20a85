"""The start form: a page per agent whose fields come from the agent's input model, checked by
that model, starting one run per idempotency key, in the operator's name, audited."""

import re

import pytest

from runs import services
from runs.actors import Actor
from runs.models import AuditEntry, Run
from tests.conftest import messages_of

pytestmark = pytest.mark.django_db

FORM = "/runs/start/t_order_form/"
VALID = {"in_customer": "Ann", "in_quantity": "5", "in_weight_kg": "2.25", "in_gift": "on", "in_colour": '"red"',
         "in_size": '"M"', "in_tags": '["fragile"]', "in_address": '{"street": "1 Main St", "city": "Oslo"}',
         "in_idempotency_key": "the agent's own", "idempotency_key": "order-ann-1"}


def field_html(html, name):
    """The markup of one field's block (label, input, error, help) on the page."""
    match = re.search(rf'<div class="field[^"]*">(?:(?!<div class="field).)*?name="{name}".*?</div>', html, re.S)
    assert match, f"no field {name} on the page"
    return match.group(0)


def test_the_form_has_an_input_of_the_right_kind_per_field_of_the_model(client, operator):
    client.force_login(operator)

    html = client.get(FORM).content.decode()

    assert 'type="text" name="in_customer"' in html and "Who placed the order." in html
    assert "at least 2 characters" in field_html(html, "in_customer")
    assert 'type="number" name="in_quantity"' in html and 'step="1"' in field_html(html, "in_quantity")
    assert 'type="number" name="in_weight_kg"' in html and 'value="1.5"' in field_html(html, "in_weight_kg")
    assert 'type="checkbox" name="in_gift"' in html
    colour = field_html(html, "in_colour")
    assert '<select name="in_colour"' in colour and '<option value="&quot;blue&quot;" selected>blue</option>' in colour
    assert '<option value="" selected>(none)</option>' in field_html(html, "in_size")
    assert '<textarea name="in_tags"' in html and "[]</textarea>" in field_html(html, "in_tags")
    assert '<textarea name="in_address"' in html
    assert 'name="in_idempotency_key"' in html  # the agent's own field, apart from the form's key
    assert re.search(r'name="idempotency_key" value="page-[0-9a-f]{32}"', html)
    assert "(required)" in field_html(html, "in_quantity") and "(required)" not in field_html(html, "in_gift")


def test_each_form_gets_a_fresh_idempotency_key(client, operator):
    client.force_login(operator)

    keys = {re.search(r'name="idempotency_key" value="([^"]+)"', client.get(FORM).content.decode()).group(1)
            for _ in range(2)}

    assert len(keys) == 2


def test_input_the_model_refuses_shows_each_error_at_its_field_and_keeps_the_text(client, operator):
    client.force_login(operator)

    response = client.post(FORM, {**VALID, "in_customer": "A", "in_quantity": "500", "in_tags": '["fragile"',
                                  "in_address": '{"street": "1 Main St"}'})

    html = response.content.decode()
    assert response.status_code == 200 and not Run.objects.exists()
    customer = field_html(html, "in_customer")
    assert "String should have at least 2 characters" in customer and 'value="A"' in customer
    quantity = field_html(html, "in_quantity")
    assert "Input should be less than or equal to 100" in quantity and 'value="500"' in quantity
    tags = field_html(html, "in_tags")
    assert "This is not valid JSON (Expecting &#x27;,&#x27; delimiter at line 1, column 11)." in tags
    assert "[&quot;fragile&quot;</textarea>" in tags
    assert "city: Field required" in field_html(html, "in_address")
    assert 'value="order-ann-1"' in html  # the key is kept too: the run is not started yet
    assert not AuditEntry.objects.exists()


def test_valid_input_starts_the_run_in_the_operators_name_and_lands_on_its_page(client, operator):
    client.force_login(operator)

    response = client.post(FORM, VALID)

    run = Run.objects.get()
    assert response.status_code == 302 and response.url == f"/runs/{run.id}/"
    assert (run.agent, run.status, run.started_by, run.idempotency_key) == ("t_order_form", "queued", "user:otto", "order-ann-1")
    assert run.input == {"customer": "Ann", "quantity": 5, "weight_kg": 2.25, "gift": True, "colour": "red", "size": "M",
                         "tags": ["fragile"], "address": {"street": "1 Main St", "city": "Oslo"},
                         "idempotency_key": "the agent's own"}
    assert messages_of(response) == [f"Started: run {str(run.id)[:8]} of t_order_form is queued; a worker takes it next."]
    entry = AuditEntry.objects.get()
    assert (entry.username, entry.action, entry.run_id) == ("otto", "start_run", run.id)
    assert entry.details == {"agent": "t_order_form", "idempotency_key": "order-ann-1"}


def test_empty_fields_take_the_models_defaults(client, operator):
    client.force_login(operator)

    client.post(FORM, {"in_customer": "Bo", "in_quantity": "1", "in_weight_kg": "", "in_colour": "", "in_size": "",
                       "in_tags": "", "in_address": "", "idempotency_key": ""})

    run = Run.objects.get()
    assert run.input == {"customer": "Bo", "quantity": 1, "weight_kg": 1.5, "gift": False, "colour": "blue",
                         "size": None, "tags": [], "address": None, "idempotency_key": ""}
    assert run.idempotency_key is None  # an empty key: no idempotency asked for


def test_the_same_form_sent_twice_starts_one_run(client, operator):
    client.force_login(operator)

    first = client.post(FORM, VALID)
    second = client.post(FORM, VALID)

    run = Run.objects.get()
    assert first.url == second.url == f"/runs/{run.id}/"
    assert messages_of(second)[-1] == "This form was sent before: here is the run it started."
    assert AuditEntry.objects.count() == 1


def test_a_used_key_with_other_input_says_so_and_gives_a_fresh_key(client, operator):
    client.force_login(operator)
    client.post(FORM, VALID)

    response = client.post(FORM, {**VALID, "in_customer": "Cy"})

    html = response.content.decode()
    assert response.status_code == 200 and Run.objects.count() == 1
    assert "already started run" in html and "with a different input" in html
    assert "The form has a new idempotency key now" in html
    assert 'value="order-ann-1"' not in html and re.search(r'name="idempotency_key" value="page-[0-9a-f]{32}"', html)
    assert 'value="Cy"' in html


def test_an_agent_without_an_input_model_takes_its_input_as_json(client, operator):
    client.force_login(operator)

    page = client.get("/runs/start/t_untyped/").content.decode()
    refused = client.post("/runs/start/t_untyped/", {"input": '{"a": [1', "idempotency_key": ""}).content.decode()
    started = client.post("/runs/start/t_untyped/", {"input": '{"a": [1, 2]}', "idempotency_key": ""})

    assert '<textarea name="input"' in page and "{}</textarea>" in page
    assert "This is not valid JSON (Expecting &#x27;,&#x27; delimiter at line 1, column 9)." in refused
    assert "{&quot;a&quot;: [1</textarea>" in refused
    assert Run.objects.get().input == {"a": [1, 2]} and started.status_code == 302


def test_the_chooser_lists_the_agents_with_what_they_do(client, operator):
    client.force_login(operator)

    html = client.get("/runs/start/").content.decode()

    assert '<a href="/runs/start/t_order_form/"><b>t_order_form</b></a>' in html
    assert "Takes an order with a field of each kind the start form draws." in html
    assert '<a href="/runs/start/refund_customer/">' in html
    assert "/runs/start/rollback/" not in html


def test_the_rollback_agent_cannot_be_started_by_hand(client, operator):
    client.force_login(operator)

    assert client.get("/runs/start/rollback/").status_code == 404
    with pytest.raises(services.ActionRefused, match="starts only from a run's Roll back"):
        services.start_run_by("rollback", {}, actor=Actor.for_user(operator))
    assert not Run.objects.exists()


def test_an_unknown_agent_is_not_found(client, operator):
    client.force_login(operator)

    assert client.get("/runs/start/no_such_agent/").status_code == 404


def test_the_runs_page_links_the_form_for_operators_only(client, operator, viewer):
    client.force_login(operator)
    assert '<a class="button" href="/runs/start/">Start run</a>' in client.get("/").content.decode()

    client.force_login(viewer)
    assert "/runs/start/" not in client.get("/").content.decode()


def test_a_viewer_is_refused_with_the_role_named(client, viewer):
    client.force_login(viewer)

    for response in (client.get("/runs/start/"), client.get(FORM), client.post(FORM, VALID)):
        assert response.status_code == 403
        assert "This needs the operator role" in response.content.decode()
    assert not Run.objects.exists() and not AuditEntry.objects.exists()


def test_the_service_refuses_a_person_without_the_role(viewer):
    with pytest.raises(services.ActionRefused, match="user:vera may not start runs: that needs the operator role"):
        services.start_run_by("t_order_form", {"customer": "Ann", "quantity": 1}, actor=Actor.for_user(viewer))
    assert not Run.objects.exists()


def test_a_key_someone_else_used_returns_their_run_and_audits_nothing(client, operator):
    from runs.moves import start_run
    from tests.agents import TEST

    theirs = start_run("t_order_form", {"customer": "Ann", "quantity": 1}, started_by=TEST, idempotency_key="shared")
    client.force_login(operator)

    response = client.post(FORM, {"in_customer": "Ann", "in_quantity": "1", "idempotency_key": "shared"})

    assert response.url == f"/runs/{theirs.id}/" and Run.objects.count() == 1
    assert not AuditEntry.objects.exists()
