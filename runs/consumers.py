"""Websocket consumers of the live pages. They only push: every change goes through a POST view.

On connect a consumer checks that the user may see runs, joins its group, and sends the current
state, so a reconnect catches up. When runs.live says a run changed, it renders the changed
parts from the database with the page's own partials and sends them; htmx swaps them in by id.
"""

from asgiref.sync import async_to_sync
from channels.generic.websocket import WebsocketConsumer
from django.http import QueryDict
from django.template.loader import render_to_string

from runs import live
from runs.listing import RunListing
from runs.models import Run
from runs.views import run_context


class LiveConsumer(WebsocketConsumer):
    def may_connect(self):
        user = self.scope.get("user")
        return user is not None and user.is_authenticated and user.has_perm("runs.view_run")

    def join(self, group):
        self.group = group
        async_to_sync(self.channel_layer.group_add)(group, self.channel_name)

    def disconnect(self, code):
        if getattr(self, "group", None):
            async_to_sync(self.channel_layer.group_discard)(self.group, self.channel_name)

    def render(self, template, context):
        return render_to_string(template, {**context, "user": self.scope["user"], "live": True})


class RunListConsumer(LiveConsumer):
    def connect(self):
        if not self.may_connect():
            self.close()
            return
        self.listing = RunListing.from_params(QueryDict(self.scope["query_string"]))
        self.join(live.list_group())
        self.accept()
        self.send_table()

    def run_changed(self, event):
        run = self.listing.one(event["run_id"])
        if run is not None and run.id not in self.shown and self.listing.is_first_page:
            self.send_table()  # a new run at the top of the page
            return
        self.send(text_data=self.render("runs/list.html#counts", {"listing": self.listing, "counts": self.listing.counts()}))
        if run is not None and run.id in self.shown:
            # Its own message: a table row parses only where a table row may stand.
            self.send(text_data=self.render("runs/list.html#row", {"run": run}))

    def send_table(self):
        runs, next_cursor = self.listing.page()
        self.shown = {run.id for run in runs}
        self.send(text_data=self.render("runs/list.html#table", {
            "listing": self.listing, "runs": runs, "next_cursor": next_cursor,
            "counts": self.listing.counts(),
        }))


class RunConsumer(LiveConsumer):
    def connect(self):
        if not self.may_connect():
            self.close()
            return
        self.run_id = self.scope["url_route"]["kwargs"]["run_id"]
        if not Run.objects.filter(id=self.run_id).exists():
            self.close()
            return
        self.join(live.run_group(self.run_id))
        self.accept()
        self.max_seq = None
        self.last_row_id = 0
        first = QueryDict(self.scope["query_string"]).get("from", "")
        self.first_seq = int(first) if first.isdigit() else None
        self.push()

    def run_changed(self, event):
        self.push()

    def push(self):
        """What changed since the last push: the run's sections, and its new or changed steps.

        New steps resend the whole list (htmx swaps it by id); changes to steps already shown
        resend those steps only.
        """
        run = Run.objects.get(id=self.run_id)
        context = run_context(run, user=self.scope["user"], first_seq=self.first_seq)
        steps = context["steps"]
        changed = {
            step.seq for step in steps if any(row.id > self.last_row_id for row in step.rows)
        }
        parts = [self.render("runs/detail.html#live", context)]
        newest = steps[-1].seq if steps else 0
        if self.max_seq is None or newest > self.max_seq:
            parts.append(self.render("runs/detail.html#step_list", context))
        else:
            parts += [
                self.render("runs/detail.html#step", {**context, "step": step})
                for step in steps if step.seq in changed
            ]
        self.max_seq = newest
        self.last_row_id = context["last_row_id"]
        self.send(text_data="\n".join(parts))
