from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs.management.operators import add_user_argument, json_option, operator
from runs.models import Run
from runs.services import NOT_EDITED, ActionRefused, fork_run


class Command(BaseCommand):
    help = (
        "Fork a run from one of its steps: a new run of the same agent that keeps steps 1..SEQ "
        "(SEQ's result replaced by --result, if given) and continues from SEQ + 1. Prints its id."
    )

    def add_arguments(self, parser):
        add_user_argument(parser)
        parser.add_argument("run_id")
        parser.add_argument("seq", type=int)
        parser.add_argument("--reason", default="", help="why; required")
        parser.add_argument("--result", help="step SEQ's edited result, as JSON (tool steps that succeeded)")

    def handle(self, *args, username, run_id, seq, reason, result, **options):
        edited = NOT_EDITED
        if result is not None:
            edited = json_option(result, "--result")
        actor = operator(username, "runs.fork_run", "fork a run")
        try:
            run_id = Run.objects.by_reference(run_id).id
        except Run.DoesNotExist as error:
            raise CommandError(str(error)) from None
        try:
            fork = fork_run(run_id, seq, actor=actor, result=edited, reason=reason)
        except (Run.DoesNotExist, ValidationError):
            raise CommandError(f"there is no run {run_id!r}") from None
        except ActionRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(str(fork.id))
