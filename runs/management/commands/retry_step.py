from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs.management.operators import add_user_argument, operator
from runs.models import Run
from runs.services import ActionRefused, retry_step


class Command(BaseCommand):
    help = (
        "Retry now: a step waiting out its backoff (or its tool's open breaker) is tried at once; "
        "a step that ran out of attempts gets a fresh round of them. The run goes on."
    )

    def add_arguments(self, parser):
        add_user_argument(parser)
        parser.add_argument("run_id")
        parser.add_argument("seq", type=int)
        parser.add_argument("--reason", default="", help="why it should work now (recorded in the audit log)")

    def handle(self, *args, username, run_id, seq, reason, **options):
        actor = operator(username, "runs.resolve_step", "retry a step")
        try:
            run_id = Run.objects.by_reference(run_id).id
        except Run.DoesNotExist as error:
            raise CommandError(str(error)) from None
        try:
            moved = retry_step(run_id, seq, actor=actor, reason=reason)
        except (Run.DoesNotExist, ValidationError):
            raise CommandError(f"there is no run {run_id!r}") from None
        except ActionRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"run {run_id} step {seq}: retry now; the run is {moved.run.status}")
