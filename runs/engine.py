"""The runtime: the RQ jobs that advance runs, under a lease kept alive by a heartbeat.

A worker holds nothing that the journal does not. Its job only says "advance run R": it claims
the run with a lease (owner, expiry, and an epoch incremented at every claim; runs/moves.py),
replays the agent from the top against the journal (runs/recorder.py), and ends by moving the
run to its next state (runs/moves.py). A heartbeat thread extends the lease while the agent
runs. If the worker dies, the lease expires and the sweeper (runs/sweeper.py) hands the run
back to the queue, where any worker takes it on.
"""

import logging
import os
import socket
import threading
import time

from django.db import DatabaseError, connection, transaction

from runs import moves, rollback
from runs.actors import Actor
from runs.agents import AGENTS, InvalidInput, get_agent
from runs.context import Context
from runs.models import Run, RunStatus, heartbeat_seconds
from runs.recorder import (
    CancelRequested, FailRun, Fenced, JournalUnavailable, NeedsAttention, PauseRequested, Recorder,
    ToolError, Wait, load_journal,
)
from runs.storable import unstorable, visible
from runs.workers import end_of_job, stopping
from tools import breakers

S = RunStatus
log = logging.getLogger(__name__)


def worker_id():
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat(threading.Thread):
    """Extends the lease while the agent runs, three times per lease, on its own connection."""

    def __init__(self, lease):
        super().__init__(daemon=True, name=f"heartbeat-{lease.run_id}")
        self.lease = lease
        self.stopped = threading.Event()

    def run(self):
        interval = heartbeat_seconds()
        try:
            while not self.stopped.wait(interval):
                try:
                    if not moves.extend_lease(self.lease):
                        return  # fenced: the journal writes will find out too
                except DatabaseError:
                    # Try again at the next beat, on a new connection; two beats remain before
                    # the lease runs out.
                    log.warning("heartbeat of run %s failed", self.lease.run_id, exc_info=True)
                    connection.close()
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join()


# The jobs ------------------------------------------------------------------------------------


def advance_run(run_id):
    """The RQ job. Running it twice, or for a run that is not queued, is harmless."""
    try:
        lease = moves.claim(run_id, worker_id())
        if lease is None:
            return "not claimable"
        with Heartbeat(lease):
            return execute(lease)
    finally:
        # The successes its breakers held back go before a work horse ends (tools.breakers).
        breakers.flush()
        # A work horse publishes what it changed and closes its connections; a no-fork
        # worker keeps them for its next job (runs.workers).
        end_of_job()


def wake_run(run_id):
    """The scheduled job of a sleep: back to the queue when the time has come (the move
    enqueues the advance). A job that comes early, or for a run woken already, does nothing."""
    return "woken" if moves.wake_sleeper(run_id).done else "not due"


def execute(lease):
    """Run the agent from the top against the journal, then move the run on. Returns its new
    status, or what stopped the worker ("fenced", "stopped")."""
    recorder = Recorder(lease, load_journal(lease.run_id), agent=lease.agent)
    end = Ending(lease, lease.agent)
    try:
        agent = get_agent(lease.agent)
        value = agent.fn(Context(recorder), agent.parse_input(lease.input))
        output = agent.dump_output(value)
        if unstorable(output):
            raise FailRun({"type": "unstorable", "message": "the agent's output cannot be stored: "
                           f"it holds {unstorable(output)}"})
    except Wait as wait:
        moved = end.suspend(wait.wait)
    except (PauseRequested, CancelRequested):
        moved = end.honour_request()
    except NeedsAttention as attention:
        moved = end.move(S.NEEDS_ATTENTION, reason=attention.reason, parked_by=attention.parked_by)
    except Fenced as fenced:
        log.warning("%s", fenced)
        return "fenced"
    except FailRun as failure:
        moved = end.fail(failure.error)
    except JournalUnavailable as error:
        # The run stays as it is; its lease expires and the sweeper hands it on.
        log.error("run %s stopped: %s", lease.run_id, error)
        return "stopped"
    except (SystemExit, KeyboardInterrupt, GeneratorExit, BaseExceptionGroup) as error:
        if stopping():
            raise  # the worker itself is being stopped (RQ's cold shutdown): the lease lapses
        # An agent may not stop its worker: left to rise, these would end the job with the run
        # still running, to be claimed, and to raise, again at every lease.
        log.warning("run %s failed: its agent raised %r", lease.run_id, error)
        moved = end.fail(visible({"type": type(error).__name__,
                                  "message": f"the agent raised {type(error).__name__}({error})"}))
    except Exception as error:
        expected = isinstance(error, (ToolError, InvalidInput))
        log.info("run %s failed: %s", lease.run_id, error, exc_info=not expected)
        if isinstance(error, ToolError):
            failure = {"type": error.type, "message": error.message, **error.details}
        else:
            failure = {"type": type(error).__name__, "message": str(error)}
        moved = end.fail(visible(failure))
    else:
        moved = end.move(S.SUCCEEDED, output=output)
    return moved.status if moved.done else "fenced"


class Ending:
    """The worker's last move of an advance, fenced by its lease. A pause or cancel found
    pending (the Moved says so) is honoured with a move of its own."""

    def __init__(self, lease, agent):
        self.lease, self.agent = lease, agent
        self.actor = Actor.worker(lease.owner)

    def move(self, to, *, reason="", **fields):
        moved = moves.move(self.lease.run_id, to, actor=self.actor, reason=reason, epoch=self.lease.epoch, **fields)
        return self.honour_request(about_to=f"become {to}") if moved.pending else moved

    def fail(self, error):
        """The run fails; an agent declared with on_failure="rollback" is rolled back in the same
        transaction, so a crash cannot leave it failed without its rollback."""
        with transaction.atomic():
            moved = self.move(S.FAILED, error=error)
            declared = AGENTS.get(self.agent)
            if moved.done and declared and declared.on_failure == "rollback":
                rollback.roll_back_on_failure(self.lease.run_id)
        return moved

    def suspend(self, wait):
        moved = moves.suspend(self.lease, wait, agent=self.agent)
        return self.honour_request(about_to="wait") if moved.pending else moved

    def honour_request(self, about_to=""):
        return moves.honour_request(self.lease.run_id, actor=self.actor, epoch=self.lease.epoch, about_to=about_to)


def wait_until_settled(run_id, timeout):
    """Poll until the run settles; the run as it then is. TimeoutError names where it stood."""
    deadline = time.monotonic() + timeout
    while True:
        run = Run.objects.get(id=run_id)
        if run.status in moves.SETTLED:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} is still {run.status} after {timeout:g}s")
        time.sleep(0.1)
