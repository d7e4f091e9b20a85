import json
import uuid

from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.timesince import timesince, timeuntil
from django.utils.timezone import now

from runs.actors import Actor
from runs.models import heartbeat_seconds
from runs.moments import moment_text
from runs.roles import role_of
from runs.timeline import readable_seconds

register = template.Library()


@register.simple_tag
def when(moment):
    """A timestamp shown relative ("3 minutes ago"), with the absolute time on hover."""
    if moment is None:
        return "—"
    absolute = moment_text(moment)
    seconds = (now() - moment).total_seconds()
    if seconds <= -60:
        relative = f"in {timeuntil(moment)}"
    elif seconds < 0:
        relative = f"in {int(-seconds) or 1} s"
    elif seconds < 60:
        relative = f"{int(seconds)} s ago"
    else:
        relative = f"{timesince(moment)} ago"
    return format_html('<time datetime="{}" title="{}">{}</time>', moment.isoformat(), absolute, relative)


# The navigation item a page belongs to, by (app, url name); otherwise by app. One item is
# highlighted on every page (a run's page belongs to Runs, an approval's to Approvals).
NAV_SECTIONS = {("runs", "audit"): "audit", ("runs", "workers"): "workers", ("tools", "approvals"): "approvals", ("tools", "approval"): "approvals"}
NAV_APPS = {"runs": "runs", "tools": "tools", "demo": "demo"}


@register.filter
def nav_section(match):
    if match is None:
        return ""
    return NAV_SECTIONS.get((match.app_name, match.url_name), NAV_APPS.get(match.app_name, ""))


@register.simple_tag
def heartbeat(run):
    """The lease holder's last beat: "heartbeat 4 s ago", flagged as late once it is older than
    the interval between beats (the worker may have died; the sweeper takes the run back when
    the lease runs out). static/js/heartbeat.js keeps the age counting in the browser."""
    beat = run.last_heartbeat
    if beat is None:
        return ""
    interval = heartbeat_seconds()
    age = int(max(0, (now() - beat).total_seconds()))
    late = age > interval
    return format_html(
        '<span class="heartbeat{}" data-heartbeat-age="{}" data-interval="{}" title="last beat {}">'
        'heartbeat <span class="age">{}</span> s ago'
        '<b class="late-note"{}>: late, a beat is due every {} s; the worker may have stopped</b></span>',
        " late" if late else "", age, interval, moment_text(beat), age, "" if late else " hidden", f"{interval:g}",
    )


@register.filter
def actor(label):
    """Who caused something, as stored ("user:ada", "run:UUID"): a run is a link with its
    short id, as everywhere else on the pages."""
    who = Actor.from_label(label or "")
    if who.kind == "run" and _is_uuid(who.name):
        return format_html('run <a href="{}"><code>{}</code></a>', reverse("runs:detail", args=[who.name]), who.name[:8])
    return label


def _is_uuid(text):
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@register.filter
def role(user):
    return role_of(user) or "no role"


@register.filter
def pretty_json(value):
    """JSON for people, as text: the template escapes it, so agent output never runs."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


# Past this many characters, a run's input or output is shown folded and cut, with a link to the
# whole: the page stays fast (and so do its live updates) when an agent is handed a megabyte.
JSON_PREVIEW_CHARS = 20_000


@register.simple_tag
def json_details(value, label, download_url):
    """A run's input or output for people: open and whole when small; folded, cut to
    JSON_PREVIEW_CHARS, with its size and a download link when large."""
    text = pretty_json(value)
    if len(text) <= JSON_PREVIEW_CHARS:
        return format_html("<details open><summary>{}</summary><pre>{}</pre></details>", label, text)
    return format_html(
        '<details class="large"><summary>{} ({} KB; the first {} KB shown)</summary>'
        '<p><a href="{}" download>Download the whole {} (JSON)</a></p><pre>{}\n…</pre></details>',
        label, f"{len(text.encode()) // 1024:,}", JSON_PREVIEW_CHARS // 1000, download_url, label.lower(),
        text[:JSON_PREVIEW_CHARS],
    )


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


@register.filter
def moment(value):
    """The absolute time, where a page shows it beside the relative one (a retry's due time)."""
    return moment_text(value) if value is not None else "—"


@register.filter
def seconds(value):
    """Seconds as people read them: 250 ms, 1.5 s, 2 min."""
    return readable_seconds(value or 0)


# What parked a run, as its chip says (runs.models.ParkedBy).
PARKED = {"budget": "over budget", "loop": "loop", "retries": "out of retries"}


@register.filter
def parked_word(parked_by):
    return PARKED.get(parked_by, parked_by)
