import json

from django.core.management.base import BaseCommand, CommandError

from runs.agents import InvalidInput, UnknownAgent
from runs.actors import CLI
from runs import queue
from runs.engine import wait_until_settled
from runs.moves import InvalidIdempotencyKey, start_run


class Command(BaseCommand):
    help = "Start a run of an agent; with --wait, wait until it settles and print its outcome."

    def add_arguments(self, parser):
        parser.add_argument("agent")
        parser.add_argument("--input", default="{}", help="the agent's input, as JSON")
        parser.add_argument("--idempotency-key", help="starting the same key again returns the same run")
        parser.add_argument("--wait", action="store_true", help="wait until the run settles")
        parser.add_argument("--timeout", type=float, default=300, help="seconds to wait, with --wait")

    def handle(self, *args, agent, input, idempotency_key, wait, timeout, **options):
        try:
            data = json.loads(input)
        except json.JSONDecodeError as error:
            raise CommandError(f"--input is not JSON: {error}") from None
        try:
            run = start_run(agent, data, started_by=CLI, idempotency_key=idempotency_key)
        except (UnknownAgent, InvalidInput, InvalidIdempotencyKey) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"run {run.id} {run.status}")
        if not queue.reachable():
            self.stdout.write(
                "Redis does not answer: the run is saved, and starts once Redis is back "
                "(the sweeper enqueues it again). Do not start it again."
            )
        if wait:
            try:
                run = wait_until_settled(run.id, timeout)
            except TimeoutError as error:
                raise CommandError(str(error)) from None
            self.stdout.write(f"run {run.id} {run.status}")
            if run.status_reason:
                self.stdout.write(run.status_reason)
            if run.output is not None:
                self.stdout.write(json.dumps(run.output))
            if run.error:
                self.stdout.write(json.dumps(run.error))
            if run.status != "succeeded":
                raise CommandError(f"run {run.id} is {run.status}")
