import json

from django import template
from django.utils.html import format_html
from django.utils.timesince import timesince, timeuntil
from django.utils.timezone import localtime, now

from runs.roles import role_of

register = template.Library()


@register.simple_tag
def when(moment):
    """A timestamp shown relative ("3 minutes ago"), with the absolute time on hover."""
    if moment is None:
        return "—"
    absolute = localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z")
    seconds = (now() - moment).total_seconds()
    if seconds < 0:
        relative = f"in {timeuntil(moment)}"
    elif seconds < 60:
        relative = f"{int(seconds)} s ago"
    else:
        relative = f"{timesince(moment)} ago"
    return format_html('<time datetime="{}" title="{}">{}</time>', moment.isoformat(), absolute, relative)


@register.filter
def role(user):
    return role_of(user) or "no role"


@register.filter
def pretty_json(value):
    """JSON for people, as text: the template escapes it, so agent output never runs."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@register.filter
def duration(value):
    """A timedelta or milliseconds as 850 ms, 12.3 s, 4 min 05 s, 2 h 10 min."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if hasattr(value, "total_seconds") else value / 1000
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@register.filter
def status_word(status):
    return (status or "").replace("_", " ")
