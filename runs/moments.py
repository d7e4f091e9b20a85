"""The one format of a moment for people: "2026-11-26 09:09:19 UTC", in the site's time zone.

Pages show a moment relative ("3 min ago") with this on hover (the `when` tag); text written
for people and stored (Run.status_reason, an error's message) uses it too, so an operator never
reads "2026-11-26T09:09:19.232953+00:00" beside "10:09:21 UTC".
"""

from django.utils.timezone import localtime

FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def moment_text(moment):
    return localtime(moment).strftime(FORMAT)
