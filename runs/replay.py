"""The replay check: does the current code still ask for the steps its runs recorded?

Before deploying a change to an agent with live runs, replay their journals against the new
code. Each run's agent is called from the top with a Recorder in dry-run mode, under a lease
that cannot write (epoch -1): recorded steps hand back their recorded results, and nothing is
written, called, asked of the policy or started. A run differs when the code asks, at some step,
for another step than the one recorded; asks for more steps after a finished run ended; stops
before the steps its run recorded; or ends otherwise than the run did.
"""

from dataclasses import dataclass

from runs.agents import UnknownAgent, get_agent
from runs.context import Context
from runs.models import Run, RunStatus
from runs.moves import Lease
from runs.recorder import EndOfJournal, FailRun, NeedsAttention, Recorder, ToolError, load_journal

S = RunStatus
# The runs whose end the code itself made: past their last step, it returned or raised. Any
# other run may stop anywhere (cancelled, paused, waiting, in doubt).
ENDED_BY_THE_CODE = {S.SUCCEEDED, S.FAILED}


@dataclass(frozen=True)
class Replayed:
    run: Run
    same: bool
    steps: int  # how many recorded steps the code asked for, the same
    difference: str = ""  # the first difference, named


def replay(run):
    journal = load_journal(run.id)
    recorded = max(journal, default=0)
    try:
        agent = get_agent(run.agent)
    except UnknownAgent as error:
        return Replayed(run, False, 0, str(error))
    recorder = Recorder(Lease(run.id, "replay", epoch=-1), journal, agent=run.agent, dry_run=True)
    try:
        value = agent.fn(Context(recorder), agent.parse_input(run.input))
        output = agent.dump_output(value)
    except EndOfJournal as end:
        if run.status in ENDED_BY_THE_CODE:
            return Replayed(run, False, end.seq - 1,
                            f"the code asks for step {end.seq}, but the run {run.status} after step {recorded}")
        # The same so far: the rest is yet to happen, or never will (a cancelled run).
        return Replayed(run, True, end.seq - 1)
    except NeedsAttention as attention:
        return Replayed(run, False, attention.seq - 1, attention.reason)
    except FailRun as failure:
        if run.status == S.FAILED and run.error == failure.error:
            return Replayed(run, True, recorder.seq)
        return Replayed(run, False, recorder.seq, f"the code fails the run ({failure.error['message']}), but the run is {run.status}")
    except Exception as error:
        return _ended_with_error(run, recorder, recorded, error)
    if recorder.seq < recorded:
        return Replayed(run, False, recorder.seq,
                        f"the code returns after step {recorder.seq}, but the journal has {recorded} steps")
    if run.status != S.SUCCEEDED:
        return Replayed(run, False, recorder.seq, f"the code succeeds, but the run is {run.status}")
    if output != run.output:
        return Replayed(run, False, recorder.seq, "the code returns another output than the run did")
    return Replayed(run, True, recorder.seq)


def _ended_with_error(run, recorder, recorded, error):
    message = error.message if isinstance(error, ToolError) else str(error)
    type_ = error.type if isinstance(error, ToolError) else type(error).__name__
    if recorder.seq < recorded:
        return Replayed(run, False, recorder.seq,
                        f"the code raises {type_} after step {recorder.seq}, but the journal has {recorded} steps")
    if run.status == S.FAILED and (run.error or {}).get("message") == message:
        return Replayed(run, True, recorder.seq)
    return Replayed(run, False, recorder.seq, f"the code raises {type_}: {message}, but the run is {run.status}")
