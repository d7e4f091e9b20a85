"""Websocket consumers of the live pages. They only push: every change goes through a POST view.

On connect a consumer checks that the user may see runs, joins its group, and sends the current
state, so a reconnect catches up. When runs.live says a run changed, it checks again that the
session still holds, renders the changed parts from the database with the page's own partials,
and sends them; htmx swaps them in by id.
"""

import time

from asgiref.sync import async_to_sync
from autobahn.exception import Disconnected
from channels.generic.websocket import WebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, get_user_model
from django.contrib.auth.context_processors import PermWrapper
from django.contrib.sessions.backends.db import SessionStore
from django.http import QueryDict
from django.template.loader import render_to_string
from django.utils.crypto import constant_time_compare

from runs import live
from runs.listing import RunListing
from runs.models import Run
from runs.views import controls_state, run_context, seq_param, state_key, steps_state
from tools.context_processors import freeze_shown, pending_approval_count

# A session ended or a role removed closes the socket within this many seconds.
ACCESS_RECHECK_SECONDS = 5
CLOSED_NO_ACCESS = 4403
CLOSED_GONE = 4404


def session_hash_holds(session, user):
    """Django's own check at every request: a session logged in before the password changed
    (or with a key since rotated out) no longer stands."""
    stored = session.get(HASH_SESSION_KEY) or ""
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return any(constant_time_compare(stored, current) for current in hashes)


class LiveConsumer(WebsocketConsumer):
    # Set once the browser has closed the socket; the disconnect message that ends us follows.
    closing = False

    def send(self, text_data=None, bytes_data=None, close=False):
        """Send, unless the browser has gone. An operator who clicks a link closes the page's
        socket, maybe while we render a live message; daphne (autobahn) then refuses the send
        until its disconnect reaches us. That is normal navigation: no error, no traceback."""
        if self.closing:
            return
        try:
            super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:
            self.closing = True

    def may_connect(self):
        user = self.scope.get("user")
        self.access_checked_at = time.monotonic()
        return user is not None and user.is_authenticated and user.has_perm("runs.view_run")

    def still_allowed(self):
        """Look again, at most every few seconds: the session may have ended, the role gone."""
        if time.monotonic() - self.access_checked_at < ACCESS_RECHECK_SECONDS:
            return True
        self.access_checked_at = time.monotonic()
        session_key = self.scope["session"].session_key
        if not session_key or not SessionStore().exists(session_key):
            return False
        user = get_user_model().objects.filter(id=self.scope["user"].id, is_active=True).first()
        if user is None or not user.has_perm("runs.view_run"):
            return False
        if not session_hash_holds(SessionStore(session_key), user):
            return False  # the password changed since this session logged in
        self.scope["user"] = user
        return True

    def join(self, group):
        self.group = group
        async_to_sync(self.channel_layer.group_add)(group, self.channel_name)

    def disconnect(self, code):
        if getattr(self, "group", None):
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def render(self, template, context):
        return render_to_string(template, {**context, "user": self.scope["user"], "live": True})

    def run_changed(self, event):
        if self.closing:
            return
        if not self.still_allowed():
            self.close(code=CLOSED_NO_ACCESS)
            return
        self.changed(event["run_id"])


class RunListConsumer(LiveConsumer):
    def connect(self):
        if not self.may_connect():
            self.close()
            return
        self.listing = RunListing.from_params(QueryDict(self.scope["query_string"]))
        self.join(live.list_group())
        self.accept()
        self.send_table()

    def changed(self, run_id):
        run = self.listing.one(run_id)
        shown = run_id in self.shown
        if (run is None and shown) or (run is not None and not shown and self.listing.is_first_page):
            # A shown run that left the filters, or a new run at the top: the table again.
            self.send_table()
            return
        self.send(text_data=self.render("runs/list.html#counts", {
            "listing": self.listing, "counts": self.listing.counts(), "parked_counts": self.listing.parked_counts(),
        }))
        if shown:
            # Its own message: a table row parses only where a table row may stand.
            self.send(text_data=self.render("runs/list.html#row", {"run": run}))

    def send_table(self):
        runs, next_cursor = self.listing.page()
        self.shown = {str(run.id) for run in runs}
        self.send(text_data=self.render("runs/list.html#table", {
            "listing": self.listing, "runs": runs, "next_cursor": next_cursor,
            "counts": self.listing.counts(), "parked_counts": self.listing.parked_counts(),
        }))


class RunConsumer(LiveConsumer):
    def connect(self):
        if not self.may_connect():
            self.close()
            return
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        if not Run.objects.filter(id=self.run_id).exists():
            self.close(code=CLOSED_GONE)
            return
        self.join(live.run_group(self.run_id))
        self.accept()
        query = QueryDict(self.scope["query_string"])
        self.first_seq, self.last_seq = seq_param(query, "from"), seq_param(query, "to")
        # What the page was rendered with (fingerprints): until the first send, the consumer
        # knows only these, and resends a part only if it no longer matches.
        self.page_keys = {"controls": query.get("controls", ""), "steps": query.get("steps", "")}
        self.shown_steps = None  # seq -> what the page shows of it
        self.shown_controls = None
        self.changed(self.run_id)

    def changed(self, run_id):
        """Send what differs from what the page shows.

        The sections are sent every time, but the controls and the panels with forms (a step in
        doubt, a step to retry, the budget) only when they change, so a reason being typed is
        not wiped. New steps resend the whole list
        (htmx swaps it by id); a step whose shown state changed (a new row, or a status derived
        from the run's, such as "in doubt") is resent alone.
        """
        run = Run.objects.filter(id=self.run_id).first()
        if run is None:
            self.close(code=CLOSED_GONE)
            return
        context = run_context(run, user=self.scope["user"], first_seq=self.first_seq, last_seq=self.last_seq)
        steps, controls = steps_state(context), controls_state(context)
        if self.page_keys:  # the first send after connecting
            if state_key(controls) == self.page_keys["controls"]:
                self.shown_controls = controls
            if state_key(steps) == self.page_keys["steps"]:
                self.shown_steps = steps
            self.page_keys = None
        parts = [self.render("runs/detail.html#live", context)]
        if controls != self.shown_controls:
            parts.append(self.render("runs/detail.html#controls", context))
            parts.append(self.render("runs/detail.html#in_doubt", context))
            parts.append(self.render("runs/detail.html#retry", context))
            parts.append(self.render("runs/detail.html#budget_form", context))
            parts.append(self.render("runs/detail.html#rollback_stopped", context))
        if self.shown_steps is None or set(steps) - set(self.shown_steps):
            parts.append(self.render("runs/detail.html#step_list", context))
        else:
            parts += [
                self.render("runs/detail.html#step", {**context, "step": step})
                for step in context["steps"] if steps[step.seq] != self.shown_steps.get(step.seq)
            ]
        self.shown_steps, self.shown_controls = steps, controls
        self.send(text_data="\n".join(parts))


class ChromeConsumer(LiveConsumer):
    """What every page shows: the freeze banner and the approvals badge (templates/chrome/).

    The freeze and approval services publish to the chrome group after commit; this sends both
    parts again, and htmx swaps them by id, so a freeze lifted in another tab leaves no stale
    banner and the badge follows requests made, decided and withdrawn.
    """

    def connect(self):
        if not self.may_connect():
            self.close()
            return
        # Where the banner's "Lift the freeze" returns to: the page that opened this socket
        # (the view checks it is ours).
        self.page_path = QueryDict(self.scope["query_string"]).get("next", "/")
        self.join(live.chrome_group())
        self.accept()
        self.send_chrome()  # a reconnect catches up

    def chrome_changed(self, event):
        if self.closing:
            return
        if not self.still_allowed():
            self.close(code=CLOSED_NO_ACCESS)
            return
        self.send_chrome()

    def send_chrome(self):
        user = self.scope["user"]
        context = {
            "freeze": freeze_shown(), "pending_approvals": pending_approval_count(),
            "perms": PermWrapper(user), "page_path": self.page_path,
            # The banner's forms post with the CSRF cookie's secret, as Django accepts from
            # JavaScript; there is no request here to mask a token with.
            "csrf_token": self.scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, ""),
        }
        self.send(text_data="\n".join([
            self.render("chrome/freeze_banner.html", context),
            self.render("chrome/approvals_badge.html", context),
        ]))
