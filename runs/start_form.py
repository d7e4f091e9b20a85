"""The start form: one field per field of an agent's input model, read off its JSON schema.

A string, number, integer, boolean or enum field gets its own input; anything else (a nested
model, a list, a union) gets a JSON text area, and so does an agent whose input is not a model
with fields. The browser checks nothing: the agent's own model (Agent.input_adapter, the one
that start_run checks) decides, and its errors are put next to the fields they name, with what
the operator typed kept.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any

from django import forms
from pydantic import ValidationError
from pydantic.errors import PydanticInvalidForJsonSchema

from runs import storable
from runs.agents import Agent

SIMPLE_KINDS = {"string", "integer", "number", "boolean"}


@dataclass(frozen=True)
class InputField:
    """One top-level field of an agent's input, as the form shows it."""

    name: str
    kind: str  # string, integer, number, boolean, choice, json
    required: bool
    default: Any = None
    has_default: bool = False
    choices: tuple = ()
    help: str = ""
    limits: str = ""
    nullable: bool = False


def input_fields(agent: Agent):
    """The fields of the agent's input model; None when its input is not a model with fields
    (the form is then one JSON text area for the whole input)."""
    try:
        schema = agent.input_adapter.json_schema()
    except PydanticInvalidForJsonSchema:  # a type pydantic cannot describe (an arbitrary class)
        return None
    properties = schema.get("properties")
    if schema.get("type") != "object" or not properties:
        return None
    definitions = schema.get("$defs", {})
    required = set(schema.get("required", ()))
    return [_field(name, _resolved(spec, definitions), name in required) for name, spec in properties.items()]


def _resolved(spec, definitions):
    """The field's schema with references followed, and a nullable union taken apart."""
    spec = dict(spec)
    if len(spec.get("allOf", ())) == 1:  # pydantic's way of putting a default beside a $ref
        spec = {**spec.pop("allOf")[0], **spec}
    if "$ref" in spec:
        target = definitions.get(spec.pop("$ref").rsplit("/", 1)[-1], {})
        spec = {**target, **spec}
    options = spec.get("anyOf")
    if options:
        others = [option for option in options if option != {"type": "null"}]
        if len(others) == 1 and len(others) < len(options):
            rest = {key: value for key, value in spec.items() if key != "anyOf"}
            return {**_resolved(others[0], definitions), **rest, "nullable": True}
    return spec


def _field(name, spec, required):
    if "enum" in spec or "const" in spec:
        kind = "choice"
        choices = tuple(spec["enum"] if "enum" in spec else [spec["const"]])
    else:
        kind = spec.get("type") if spec.get("type") in SIMPLE_KINDS else "json"
        choices = ()
    return InputField(
        name=name, kind=kind, required=required, default=spec.get("default"), has_default="default" in spec,
        choices=choices, help=spec.get("description", ""), limits=_limits(spec), nullable=spec.get("nullable", False),
    )


def _limits(spec):
    """The model's rules for a field, said briefly: 'at least 1', 'at most 200 characters'."""
    said = []
    for key, words in (("minimum", "at least"), ("exclusiveMinimum", "more than"), ("maximum", "at most"),
                       ("exclusiveMaximum", "less than")):
        if key in spec:
            said.append(f"{words} {spec[key]:g}" if isinstance(spec[key], float) else f"{words} {spec[key]}")
    if "minLength" in spec:
        said.append(f"at least {spec['minLength']} characters")
    if "maxLength" in spec:
        said.append(f"at most {spec['maxLength']} characters")
    if "pattern" in spec:
        said.append(f"matching {spec['pattern']}")
    return ", ".join(said)


def new_idempotency_key():
    """A fresh key for one form: submitting the same form twice starts one run."""
    return f"page-{uuid.uuid4().hex}"


def _choice_value(value):
    return json.dumps(value)


class AgentInputForm(forms.Form):
    """The agent's input, field by field (or as JSON), checked by the agent's model.

    After is_valid(), `input` holds the data to start the run with."""

    idempotency_key = forms.CharField(
        max_length=200, required=False,
        help_text="Submitting this form again with the same key starts no second run.",
    )

    def __init__(self, agent: Agent, data=None):
        super().__init__(data, initial={"idempotency_key": new_idempotency_key()})
        self.agent = agent
        self.input_fields = input_fields(agent)
        self.input = None
        if self.input_fields is None:
            self.fields["input"] = forms.CharField(
                required=False, label="Input (JSON)", initial="{}",
                widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "json"}),
                help_text="This agent declares no input model with fields: give its whole input as JSON.",
            )
        else:
            for spec in self.input_fields:
                self.fields[self.field_name(spec.name)] = _form_field(spec)

    @staticmethod
    def field_name(name):
        # Apart from the form's own fields (an input field may be called idempotency_key too).
        return f"in_{name}"

    @property
    def rows(self):
        """(bound field, InputField) for each field of the input, in the model's order."""
        return [(self[self.field_name(spec.name)], spec) for spec in self.input_fields or ()]

    def clean(self):
        data = self._collect()
        if data is _NOT_JSON:
            return
        # The model judges what could be read, so that every field's error shows at once.
        try:
            self.agent.input_adapter.validate_python(data)
        except ValidationError as error:
            for problem in error.errors():
                self._place(problem)
        if not self.errors:
            self.input = data

    def _collect(self):
        """The input as the model will see it. An empty field is left out, so that its default
        applies (or the model says it is required)."""
        if self.input_fields is None:
            text = self.cleaned_data.get("input", "")
            return self._json_of("input", text) if text else {}
        data = {}
        for spec in self.input_fields:
            key = self.field_name(spec.name)
            value = self.cleaned_data.get(key)
            if spec.kind == "boolean":
                data[spec.name] = bool(value)
            elif value in ("", None):
                continue
            elif spec.kind == "choice":
                data[spec.name] = storable.loads(value)
            elif spec.kind == "json":
                parsed = self._json_of(key, value)
                if parsed is not _NOT_JSON:
                    data[spec.name] = parsed
            elif spec.kind in ("integer", "number"):
                data[spec.name] = _number_or_text(value, int if spec.kind == "integer" else float)
            else:
                data[spec.name] = value
        return data

    def _json_of(self, key, text):
        try:
            return storable.loads(text)
        except json.JSONDecodeError as error:
            self.add_error(key, f"This is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}).")
            return _NOT_JSON

    def _place(self, problem):
        """A model error next to the field it names; one about the whole input above the form."""
        location = [str(part) for part in problem["loc"]]
        message = problem["msg"]
        if self.input_fields is None:
            if "input" not in self.errors:
                self.add_error("input", f"{'.'.join(location) or 'input'}: {message}")
            return
        key = self.field_name(location[0]) if location else None
        if key in self.errors:  # its text could not be read: that is its error
            return
        if key in self.fields:
            inside = ".".join(location[1:])
            self.add_error(key, f"{inside}: {message}" if inside else message)
        else:
            self.add_error(None, f"{'.'.join(location) or 'input'}: {message}")


_NOT_JSON = object()


def _number_or_text(text, kind):
    """The number typed, or the text itself for the model to refuse in its own words."""
    try:
        return kind(text)
    except ValueError:
        return text


def _form_field(spec: InputField):
    label = spec.name
    help_text = " · ".join(part for part in (spec.help, spec.limits) if part)
    common = {"required": False, "label": label, "help_text": help_text}
    if spec.kind == "boolean":
        return forms.BooleanField(initial=bool(spec.default), **common)
    if spec.kind == "choice":
        empty = [] if spec.required and not spec.nullable else [("", "(none)" if spec.nullable else "(default)")]
        choices = empty + [(_choice_value(value), str(value)) for value in spec.choices]
        initial = _choice_value(spec.default) if spec.has_default and spec.default is not None else ""
        return forms.ChoiceField(choices=choices, initial=initial, **common)
    if spec.kind == "json":
        initial = json.dumps(spec.default, indent=2) if spec.has_default and spec.default is not None else ""
        return forms.CharField(
            initial=initial, widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "json"}),
            **{**common, "help_text": " · ".join(part for part in (help_text, "JSON") if part)},
        )
    initial = spec.default if spec.has_default and spec.default is not None else ""
    if spec.kind in ("integer", "number"):
        widget = forms.NumberInput(attrs={"step": "1" if spec.kind == "integer" else "any"})
        return forms.CharField(initial=initial, widget=widget, **common)
    return forms.CharField(initial=initial, **common)
