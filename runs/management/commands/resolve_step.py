from django.core.exceptions import ValidationError

from django.core.management.base import BaseCommand, CommandError

from runs.management.operators import add_user_argument, json_option, operator
from runs.models import Run
from runs.services import ActionRefused, Resolution, resolve_step


class Command(BaseCommand):
    help = (
        "Decide a step whose outcome is in doubt: it happened (with --result), run it again, "
        "or fail it (with --reason). The run then goes on."
    )

    def add_arguments(self, parser):
        add_user_argument(parser)
        parser.add_argument("run_id")
        parser.add_argument("seq", type=int)
        parser.add_argument("decision", choices=Resolution.ALL)
        parser.add_argument("--result", help="with 'happened': the step's result, as JSON")
        parser.add_argument("--reason", default="", help="why; required with 'fail'")

    def handle(self, *args, username, run_id, seq, decision, result, reason, **options):
        if decision == Resolution.HAPPENED:
            if result is None:
                raise CommandError("'happened' needs --result: the JSON the agent receives as the step's result")
            result = json_option(result, "--result")
        elif result is not None:
            raise CommandError(f"--result goes only with 'happened', not with {decision!r}")
        actor = operator(username, "runs.resolve_step", "resolve a step in doubt")
        try:
            run_id = Run.objects.by_reference(run_id).id
        except Run.DoesNotExist as error:
            raise CommandError(str(error)) from None
        try:
            run = resolve_step(run_id, seq, decision, actor=actor, result=result, reason=reason)
        except (Run.DoesNotExist, ValidationError):
            raise CommandError(f"there is no run {run_id!r}") from None
        except ActionRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"run {run.id} step {seq}: {decision}; the run is {run.status}")
