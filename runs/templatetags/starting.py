"""Template helpers of the pages that start runs (runs/starting.py)."""

from django import template

from runs.start_form import new_idempotency_key

register = template.Library()


@register.simple_tag
def fresh_idempotency_key():
    """A new key each time the button is drawn: a double click on one button starts one run."""
    return new_idempotency_key()
