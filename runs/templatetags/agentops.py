from django import template
from django.utils.html import format_html
from django.utils.timesince import timesince
from django.utils.timezone import localtime

from runs.roles import role_of

register = template.Library()


@register.simple_tag
def when(moment):
    """A timestamp shown relative ("3 minutes ago"), with the absolute time on hover."""
    if moment is None:
        return "—"
    absolute = localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")
    return format_html(
        '<time datetime="{}" title="{}">{} ago</time>', moment.isoformat(), absolute, timesince(moment)
    )


@register.filter
def role(user):
    return role_of(user) or "no role"
