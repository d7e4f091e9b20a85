"""The websocket routes, and who may open them."""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.urls import path

from runs import consumers

websocket_urlpatterns = [
    path("ws/runs/", consumers.RunListConsumer.as_asgi()),
    path("ws/runs/<uuid:run_id>/", consumers.RunConsumer.as_asgi()),
    path("ws/chrome/", consumers.ChromeConsumer.as_asgi()),
]


class SameOriginOnly:
    """A websocket opens only from a page of this site: its Origin names the host and port the
    browser connected to (the Host header), as Django's CSRF check asks of a POST, or one of
    CSRF_TRUSTED_ORIGINS. Channels' AllowedHostsOriginValidator, outside it, checks the host
    name alone against ALLOWED_HOSTS; a page served on another port of the same host is
    another origin."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        origin = headers.get(b"origin", b"").decode("latin1")
        host = headers.get(b"host", b"").decode("latin1")
        if origin and (urlsplit(origin).netloc == host or trusted(origin)):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)


def trusted(origin):
    """Whether CSRF_TRUSTED_ORIGINS lists the origin, read as Django's CSRF check reads it
    (an entry may start its host with "*." for any subdomain)."""
    scheme, netloc = urlsplit(origin)[:2]
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        entry_scheme, entry_netloc = urlsplit(entry)[:2]
        if entry_scheme != scheme:
            continue
        if entry_netloc == netloc or (entry_netloc.startswith("*.") and netloc.endswith(entry_netloc[1:])):
            return True
    return False
