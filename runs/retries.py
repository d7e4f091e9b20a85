"""Retry policies: how often a failed call is tried again, how long to wait, and how long a call
may take.

A tool (`@tool(retry=RetryPolicy(...))`) or an LLM provider (`@provider(..., retry=...)`)
declares its policy; the recorder (runs/recorder.py) applies it to every attempt of a step. The
error a call raises decides what follows (`decide`):

- ContractViolation or PermanentError: the step fails; trying again cannot help;
- a transient error (TransientError, a connection error, a timeout, or a type the policy lists):
  tried again after a backoff, if the call may be repeated:
  - a read, an LLM call or an idempotent write (its downstream dedupes on the key): yes;
  - any other write: only when the error proves the call never happened (CallNotMade, a refused
    connection). A timeout of such a write leaves the step in doubt, for a person: never a
    second call;
- anything else: the step fails.

The backoff is exponential with full jitter: attempt k waits a random share of
min(max_delay, base_delay * 2 ** (k - 1)). The share is drawn from a hash of the step's
idempotency key and the attempt, so every replay of the journal, and every test, finds the same
delay, while runs that failed together spread out.
"""

import hashlib
import signal
import threading
import time
from dataclasses import dataclass, field, replace

# Transient failures back off in the worker when the delay is this short; a longer delay is a
# scheduled wake-up (a wait of kind retry) and the worker takes other runs meanwhile.
SLEEP_IN_WORKER_UP_TO_SECONDS = 1.0
# The longest timeout a policy may declare: a call must end well within the RQ job that makes it
# (runs.queue.JOB_TIMEOUT_SECONDS, an hour). And the longest delay between two attempts.
LONGEST_TIMEOUT_SECONDS = 3000
LONGEST_DELAY_SECONDS = 86400


class TransientError(Exception):
    """Raised by a tool: the call failed for now, and the same call may work later."""


class CallNotMade(TransientError):
    """Raised by a tool: the call surely never reached the far side (nothing was sent), so even
    a write that cannot dedupe may be tried again."""


class PermanentError(Exception):
    """Raised by a tool: the call failed and the same call will fail again; never retried."""


class CallTimedOut(BaseException):
    """The call outlived its policy's timeout and was stopped.

    A BaseException, so that the tool's own client cannot take it for one of its timeouts
    (TimeoutError is socket.timeout, which HTTP clients catch, retry and wrap) and carry on."""


class InvalidRetryPolicy(ValueError):
    pass


# What counts as transient when a policy does not say more: the tool's own word, a network
# that failed, a call that took too long.
TRANSIENT = (TransientError, ConnectionError, TimeoutError)
# What proves that a call did not happen.
NOT_MADE = (CallNotMade, ConnectionRefusedError)


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts counts the first call; 1 means never retried. Delays and timeout in seconds;
    timeout None means no limit. `transient` adds exception types that count as transient."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float | None = 30.0
    transient: tuple = field(default=())

    def checked(self, owner):
        """The policy, if every setting makes sense; InvalidRetryPolicy names the setting and the
        owner ("tool 'refund'") otherwise."""
        problems = []
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool) or self.max_attempts < 1:
            problems.append(f"max_attempts must be a whole number of at least 1, not {self.max_attempts!r}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                problems.append(f"{name} must be a number of seconds from 0 to {LONGEST_DELAY_SECONDS}, not {value!r}")
        if _number(self.base_delay) and _number(self.max_delay) and self.max_delay < self.base_delay:
            problems.append(f"max_delay ({self.max_delay!r}) must not be below base_delay ({self.base_delay!r})")
        if self.timeout is not None and (not _number(self.timeout, LONGEST_TIMEOUT_SECONDS) or self.timeout <= 0):
            problems.append(f"timeout must be a number of seconds above 0 and at most {LONGEST_TIMEOUT_SECONDS}, "
                            f"or None, not {self.timeout!r}")
        transient = self.transient if isinstance(self.transient, tuple) else (self.transient,)
        if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in transient):
            problems.append(f"transient must be a tuple of exception classes, not {self.transient!r}")
        if problems:
            raise InvalidRetryPolicy(f"{owner}: retry policy refused: {'; '.join(problems)}")
        return replace(self, transient=transient)

    def delay(self, attempt, key):
        """Seconds to wait after failed attempt `attempt` (1, 2, ...) of the step with this
        idempotency key: full jitter under the exponential ceiling."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return round(ceiling * _share(f"{key}:{attempt}"), 3)

    def is_transient(self, error):
        if isinstance(error, CallTimedOut):
            return True
        return isinstance(error, TRANSIENT + self.transient) and not isinstance(error, PermanentError)


def _number(value, longest=LONGEST_DELAY_SECONDS):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            and abs(value) <= longest)


def _share(text):
    """A number in [0, 1) drawn from the text: the same text, the same number."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


# Defaults: a read or an LLM call is cheap to repeat; a write that cannot dedupe is retried
# only when the call provably did not happen (decide), with the same schedule.
READ_POLICY = RetryPolicy()
WRITE_POLICY = RetryPolicy()
LLM_POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=20.0, timeout=120.0)


# The decision -------------------------------------------------------------------------------

RETRY, FAIL, IN_DOUBT = "retry", "fail", "in_doubt"


def decide(policy, error, *, repeatable):
    """What follows a failed attempt: RETRY (if attempts remain), FAIL, or IN_DOUBT.

    `repeatable`: a second call cannot do harm (a read, an LLM call, an idempotent write).
    """
    if not (isinstance(error, CallTimedOut) or policy.is_transient(error)):
        return FAIL
    if repeatable or isinstance(error, NOT_MADE):
        return RETRY
    # A write that cannot dedupe, which failed on the way (a timeout, a connection lost) without
    # proof that it never reached the far side: it may have happened.
    return IN_DOUBT


# Timeouts -------------------------------------------------------------------------------------


def call_with_timeout(fn, seconds):
    """fn(), stopped with CallTimedOut once it has run `seconds` (None: no limit).

    In a process's main thread (an RQ worker's job) the limit is a SIGALRM timer, which
    interrupts the call where it stands, blocking I/O included; RQ's own job timeout uses the
    same timer, so it is put back, less the time spent, afterwards. Elsewhere (a thread) the call
    runs in a thread of its own that is left behind when the limit passes: its result is
    ignored, and nothing is recorded from it.
    """
    if seconds is None:
        return fn()
    if threading.current_thread() is threading.main_thread():
        return _with_alarm(fn, seconds)
    return _with_thread(fn, seconds)


def _with_alarm(fn, seconds):
    """The timer fires at the limit and again every half second until the call gives up: a
    client that swallows one interruption meets the next. Whatever the call returns or raises
    after the limit is thrown away: it timed out."""
    state = {"fired": False, "done": False}
    started = time.monotonic()
    previous_handler = signal.getsignal(signal.SIGALRM)
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    # RQ's job timeout, if it comes first, stays RQ's: its handler runs at its time.
    rq_first = bool(previous_delay) and previous_delay <= seconds

    def alarm(signum, frame):
        if state["done"]:
            return
        if rq_first and callable(previous_handler):
            return previous_handler(signum, frame)
        state["fired"] = True
        raise CallTimedOut(f"the call took longer than its timeout of {seconds:g} s and was stopped")

    try:
        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, previous_delay if rq_first else seconds, 0.5)
        try:
            result = fn()
        except CallTimedOut:
            raise
        except BaseException as error:
            if state["fired"]:
                raise CallTimedOut(f"the call took longer than its timeout of {seconds:g} s and was stopped "
                                   f"(it then raised {type(error).__name__})") from error
            raise
        if state["fired"]:
            raise CallTimedOut(f"the call took longer than its timeout of {seconds:g} s and was stopped")
        return result
    finally:
        state["done"] = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay and not rq_first:
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), previous_interval)


def _with_thread(fn, seconds):
    outcome = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as error:  # handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True, name="call-with-timeout")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CallTimedOut(f"the call took longer than its timeout of {seconds:g} s and was abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
