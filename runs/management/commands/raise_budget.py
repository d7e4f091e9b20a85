from django.core.management.base import BaseCommand, CommandError

from runs.budgets import KEYS
from runs.management.operators import add_user_argument, operator
from runs.models import Run, RunStatus
from runs.services import ActionRefused, limits_from_text, raise_budget


class Command(BaseCommand):
    help = (
        "Raise some of a run's budget limits (--set retries=20 --set llm_tokens=none); a run parked "
        "by a budget or a loop goes on at once. A limit can only be raised."
    )

    def add_arguments(self, parser):
        add_user_argument(parser)
        parser.add_argument("run_id")
        parser.add_argument(
            "--set", dest="limits", action="append", default=[], metavar="BUDGET=LIMIT",
            help=f"a new limit: BUDGET is one of {', '.join(KEYS)}; LIMIT a number, or none for no limit "
                 "(repeat --set for more)",
        )
        parser.add_argument("--reason", default="", help="why the run may spend more (recorded in the audit log)")

    def handle(self, *args, username, run_id, limits, reason, **options):
        if not limits:
            raise CommandError("say which budget to raise, and to what: --set BUDGET=LIMIT (e.g. --set retries=20)")
        texts = {}
        for pair in limits:
            key, equals, text = pair.partition("=")
            if not equals or not key.strip() or not text.strip():
                raise CommandError(f"--set {pair}: write BUDGET=LIMIT, e.g. retries=20 or llm_tokens=none")
            texts[key.strip()] = text
        try:
            limits = limits_from_text(texts)
        except ActionRefused as error:
            raise CommandError(str(error)) from None
        actor = operator(username, "runs.resume_run", "raise a run's budget")
        try:
            run = Run.objects.by_reference(run_id)
            parked = run.parked_by
            run = raise_budget(run.id, limits, actor=actor, reason=reason)
        except Run.DoesNotExist as error:
            raise CommandError(str(error)) from None
        except ActionRefused as error:
            raise CommandError(str(error)) from None
        shown = ", ".join(f"{key} {'unlimited' if run.budget.get(key) is None else run.budget[key]}" for key in texts)
        going_on = f"; it was parked by its {parked} and goes on" if parked and run.status == RunStatus.QUEUED else ""
        self.stdout.write(f"run {run.id} budget: {shown}{going_on}; the run is {run.status}")
