"""Replay recorded journals against the current code, writing nothing (runs/replay.py)."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs.models import Run
from runs.replay import replay


class Command(BaseCommand):
    help = (
        "Check that the current code still asks for the steps its runs recorded: run this before "
        "deploying a change to an agent with live runs. Writes nothing; exits 1 on any difference."
    )

    def add_arguments(self, parser):
        parser.add_argument("--agent", help="only runs of this agent")
        parser.add_argument("--run", action="append", default=[], help="only this run (repeatable)")
        parser.add_argument("--last", type=int, default=100, help="the newest N runs (default 100)")

    def handle(self, *args, agent, run, last, **options):
        if last < 1:
            raise CommandError("--last must be at least 1")
        runs = Run.objects.order_by("-created_at", "-id")
        if agent:
            runs = runs.filter(agent=agent)
        if run:
            try:
                runs = runs.filter(id__in=run)
                found = {str(r.id) for r in runs}
            except ValidationError:
                raise CommandError(f"not a run id: {', '.join(run)}") from None
            missing = sorted(set(run) - found)
            if missing:
                raise CommandError(f"there is no run {', '.join(missing)}")
        runs = list(runs[:last])
        if not runs:
            raise CommandError("no run to replay" + (f" of agent {agent!r}" if agent else ""))
        different = 0
        for one in runs:
            result = replay(one)
            if result.same:
                self.stdout.write(f"same       {one.id} {one.agent} ({one.status}): {result.steps} step(s) as recorded")
            else:
                different += 1
                self.stdout.write(f"DIFFERENT  {one.id} {one.agent} ({one.status}): {result.difference}")
        self.stdout.write(f"replay: runs={len(runs)} same={len(runs) - different} different={different}")
        if different:
            raise CommandError(f"{different} run(s) would not replay with the current code; see above")
