"""Start a run of an agent, in the name of a user who may start runs; with --wait, follow it.

    python manage.py start_run AGENT [--input JSON | --input-file PATH (- for stdin)] [--user NAME]
                               [--idempotency-key KEY] [--budget JSON]
                               [--wait [--timeout SECONDS]]

With --wait it prints each change of the run (its status, and each step as it is journaled),
and a line every PROGRESS_SECONDS while nothing changes, until the run settles or a person must
act. Exit codes: 0 the run succeeded; 1 it failed, was cancelled, or did not settle within
--timeout (or the command was refused); 3 (PERSON_MUST_ACT) it waits for a person: an approval,
a freeze to lift, a step in doubt to resolve, or a resume. The line before the exit says who
must do what, and where (a link under the SITE_URL setting).
"""

import json
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from runs import queue, services
from runs.management.operators import add_user_argument, json_option, operator
from runs.models import FINISHED, JournalEntry, Run, RunStatus, WaitKind
from tools.models import Approval

S = RunStatus
PERSON_MUST_ACT = 3
PROGRESS_SECONDS = 10
POLL_SECONDS = 0.2


class Command(BaseCommand):
    help = (
        "Start a run of an agent; with --wait, follow it until it settles (exit 0 if it succeeded, "
        f"1 if not) or a person must act (exit {PERSON_MUST_ACT}, with the link where they act)."
    )

    def add_arguments(self, parser):
        add_user_argument(parser)
        parser.add_argument("agent")
        given = parser.add_mutually_exclusive_group()
        given.add_argument("--input", default=None, help="the agent's input, as JSON (default {})")
        given.add_argument("--input-file", default=None, metavar="PATH",
                           help="read the input from a JSON file (- for standard input): for large inputs")
        parser.add_argument("--idempotency-key", help="starting the same key again returns the same run")
        parser.add_argument("--budget", default=None, metavar="JSON",
                            help="""limits over the agent's own, as JSON: '{"retries": 5, "llm_tokens": null}' (null: no limit)""")
        parser.add_argument("--wait", action="store_true", help="follow the run until it settles or a person must act")
        parser.add_argument("--timeout", type=float, default=300, help="seconds to wait, with --wait")

    def handle(self, *args, username, agent, input, input_file, idempotency_key, budget, wait, timeout, **options):
        source, text = ("--input", input or "{}") if input_file is None else (input_file, self.read(input_file))
        data = json_option(text, source)
        budget = None if budget is None else json_option(budget, "--budget")
        actor = operator(username, "runs.start_run", "start runs")
        try:
            # The service the start form uses: the same checks, audited in the user's name.
            run = services.start_run_by(agent, data, actor=actor, idempotency_key=idempotency_key, budget=budget)
        except services.ActionRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"run {run.id} {run.status}")
        if not queue.reachable():
            self.stdout.write(
                "Redis does not answer: the run is saved, and starts once Redis is back "
                "(the sweeper enqueues it again). Do not start it again."
            )
        if wait:
            self.follow(run, timeout)

    def read(self, path):
        if path == "-":
            return sys.stdin.read()
        try:
            return Path(path).read_text()
        except OSError as error:
            raise CommandError(f"--input-file {path}: {error.strerror}") from None

    def follow(self, run, timeout):
        deadline = time.monotonic() + timeout
        shown_state = (run.status, run.wait_kind, run.wait_ref)
        shown_outcomes = 0
        last_line_at = time.monotonic()
        while True:
            run = Run.objects.get(id=run.id)
            outcomes = JournalEntry.objects.filter(run=run, phase=JournalEntry.Phase.OUTCOME).order_by("id")
            for entry in outcomes[shown_outcomes:]:
                what = " ".join(part for part in (entry.get_kind_display().lower(), entry.name, entry.status) if part)
                self.stdout.write(f"  step {entry.seq}: {what}")
                shown_outcomes += 1
                last_line_at = time.monotonic()
            if (run.status, run.wait_kind, run.wait_ref) != shown_state:
                shown_state = (run.status, run.wait_kind, run.wait_ref)
                self.stdout.write(f"run {run.id} {self.describe(run)}")
                last_line_at = time.monotonic()
            person = self.what_a_person_must_do(run)
            if person:
                self.stdout.write(person)
                raise SystemExit(PERSON_MUST_ACT)
            if run.status in FINISHED:
                return self.finished(run)
            if time.monotonic() > deadline:
                raise CommandError(f"run {run.id} is still {self.describe(run)} after {timeout:g}s")
            if time.monotonic() - last_line_at >= PROGRESS_SECONDS:
                self.stdout.write(f"run {run.id} still {self.describe(run)}")
                last_line_at = time.monotonic()
            time.sleep(POLL_SECONDS)

    def describe(self, run):
        if run.status == S.WAITING and run.wait_kind:
            return f"waiting ({WaitKind(run.wait_kind).label.lower()})"
        return run.status

    def what_a_person_must_do(self, run):
        """The line that says who must act, and where; None while the run needs no one."""
        if run.status == S.WAITING and run.wait_kind == WaitKind.APPROVAL:
            approval = Approval.objects.filter(id=run.wait_ref).first()
            tool = approval.tool if approval else "a tool call"
            return (f"waiting for a person to approve {tool} (step {approval.seq if approval else '?'}): "
                    f"approve or deny at {link('tools:approval', approval.id) if approval else link('tools:approvals')}")
        if run.status == S.WAITING and run.wait_kind == WaitKind.FREEZE:
            return f"waiting for an admin to lift the freeze on {run.agent}: {link('tools:list')}"
        if run.status == S.NEEDS_ATTENTION:
            return (f"needs attention: {run.status_reason or 'a step needs a decision'}; "
                    f"decide at {link('runs:detail', run.id)}")
        if run.status == S.PAUSED:
            return f"paused: an operator resumes it at {link('runs:detail', run.id)}"
        return None

    def finished(self, run):
        if run.status_reason:
            self.stdout.write(run.status_reason)
        if run.output is not None:
            self.stdout.write(json.dumps(run.output))
        if run.error:
            self.stdout.write(json.dumps(run.error))
        if run.status != S.SUCCEEDED:
            raise CommandError(f"run {run.id} is {run.status}")


def link(name, *args):
    return settings.SITE_URL + reverse(name, args=args)
