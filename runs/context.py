"""What an agent's code calls: `ctx.tool`, `ctx.llm`, `ctx.now`, `ctx.uuid`, `ctx.sleep`, and
child runs. Each call becomes one Step, recorded by the Recorder (runs/recorder.py), which
replays it from the journal when it already happened.

The API's own parameters are positional-only, so that a tool argument or a model request field
may have any name (`name`, `provider`, `agent`, ...).
"""

import json
import uuid as uuid_module
from datetime import datetime

from django.utils import timezone

from runs import moves
from runs.actors import Actor
from runs.agents import InvalidInput, UnknownAgent
from runs.llm import UnknownProvider, get_provider
from runs.models import FINISHED, JournalEntry, Run, RunStatus
from runs.recorder import Recorder, Step, Wait
from runs.waits import WaitFor
from tools.registry import TOOLS, ContractViolation

K = JournalEntry.Kind


class ChildRunFailed(Exception):
    pass


class Context:
    def __init__(self, recorder: Recorder):
        self._recorder = recorder
        self.run_id = recorder.run_id

    def tool(self, name, /, **arguments):
        """Call a registered tool; returns its result or raises ToolError."""
        spec = TOOLS.get(name)
        if spec is None:
            return self._contract_error(K.TOOL, name, arguments, f"unknown tool {name!r}")
        try:
            args = spec.parse(arguments)
        except ContractViolation as error:
            return self._contract_error(K.TOOL, name, arguments, str(error))
        return self._recorder.record(Step(
            kind=K.TOOL,
            name=name,
            args=args.model_dump(mode="json"),
            call=lambda key: spec.call(args, key),
            effect=spec.effect,
            writes_intent=spec.writes,
            idempotent=spec.idempotent,
            reconcile=(lambda key: spec.reconcile(args, key)) if spec.reconcile else None,
            guarded=True,
            retry=spec.retry,
            repeatable=spec.repeatable,
            breaker=spec.breaker,
        ))

    def llm(self, provider, /, **request):
        """Call a model through a registered provider; replay returns the recorded response."""
        try:
            model = get_provider(provider)
        except UnknownProvider as error:
            return self._contract_error(K.LLM, provider, request, str(error))
        # A model call changes nothing: repeating it after a failure costs only its tokens.
        return self._recorder.record(Step(kind=K.LLM, name=provider, args=request, call=lambda key: model.fn(**request),
                                          retry=model.retry, repeatable=True))

    def now(self) -> datetime:
        recorded = self._recorder.record(Step(kind=K.NOW, name="", args=None, call=lambda key: timezone.now().isoformat()))
        return datetime.fromisoformat(recorded)

    def uuid(self) -> uuid_module.UUID:
        recorded = self._recorder.record(Step(kind=K.UUID, name="", args=None, call=lambda key: str(uuid_module.uuid4())))
        return uuid_module.UUID(recorded)

    def sleep(self, seconds, /):
        """Sleep without holding a worker: the run waits and is woken by a scheduled job."""
        self._recorder.sleep(float(seconds))

    def start_child(self, agent, input, /) -> uuid_module.UUID:
        """Start a child run (once, whatever happens to this worker); returns its id."""
        parent_id, seq = self.run_id, self._recorder.seq + 1

        def call(key):
            try:
                child = moves.start_run(
                    agent, input, started_by=Actor.run(parent_id), parent_id=parent_id,
                    idempotency_key=f"child-{parent_id}-{seq}",
                )
            except (UnknownAgent, InvalidInput) as error:
                raise ContractViolation(str(error)) from None
            return str(child.id)

        return uuid_module.UUID(self._recorder.record(Step(kind=K.CHILD_START, name=agent, args=input, call=call)))

    def wait_child(self, child_id, /):
        """The child run's output once it has finished; ToolError if it did not succeed."""
        child_id = str(child_id)

        def call(key):
            child = Run.objects.only("status", "output", "error").filter(id=child_id).first()
            if child is None:
                raise ContractViolation(f"there is no child run {child_id}")
            if child.status == RunStatus.SUCCEEDED:
                return child.output
            if child.status in FINISHED:
                message = (child.error or {}).get("message", "")
                raise ChildRunFailed(f"child run {child_id} ended {child.status}" + (f": {message}" if message else ""))
            raise Wait(WaitFor.child(child_id))

        return self._recorder.record(Step(kind=K.CHILD_WAIT, name="", args={"run_id": child_id}, call=call))

    def run_child(self, agent, input, /):
        return self.wait_child(self.start_child(agent, input))

    def _contract_error(self, kind, name, arguments, message):
        """Unknown tool or bad arguments: the step fails at the boundary and is never retried."""

        def refuse(key):
            raise ContractViolation(message)

        # Arguments that are not even JSON are recorded as their text.
        recorded = json.loads(json.dumps(arguments, default=repr))
        return self._recorder.record(Step(kind=kind, name=name, args=recorded, call=refuse))

