"""A run's journal as people read it: steps (the rows of one seq together) and a waterfall."""

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Case, F, JSONField, When
from django.utils.timezone import localtime

from runs.actors import Actor
from runs.agents import AGENTS
from runs.budgets import KEYS, LABELS, Trail, limits_for, spent_from
from runs.models import JournalEntry, ParkedBy, Run, RunEvent, RunStatus, WaitKind
from tools.models import ApprovalStatus
from tools.models import Redactor
from tools.registry import TOOLS, WRITING_EFFECTS

S = RunStatus
A = ApprovalStatus
P = JournalEntry.Phase
RETRY = JournalEntry.Status.RETRY
# A step whose last attempt failed and is not over: tried again (at its next_at, or at once when
# an operator said so), or out of attempts, waiting for a person.
WILL_RETRY, OUT_OF_ATTEMPTS = "will_retry", "out_of_attempts"


@dataclass(frozen=True)
class FailedAttempt:
    """One failed attempt of a step, as its outcome row recorded it (runs/recorder.py)."""

    attempt: int
    at: datetime
    type: str
    message: str
    delay_s: float | None  # the backoff chosen before the next attempt
    next_at: datetime | None  # when the next attempt was due
    exhausted: bool  # the last its retry policy allowed

    @property
    def timed_out(self):
        return self.type == "timeout"

    @classmethod
    def of(cls, row):
        error = row.error or {}
        next_at = error.get("next_at")
        return cls(
            attempt=row.attempt, at=row.created_at, type=str(error.get("type", "")), message=str(error.get("message", "")),
            delay_s=error.get("delay_s"), next_at=datetime.fromisoformat(next_at) if next_at else None,
            exhausted=bool(error.get("exhausted")),
        )


@dataclass
class StepView:
    seq: int
    kind: str
    name: str
    effect: str
    idempotency_key: str
    args: object
    rows: list = field(default_factory=list)
    status: str = ""  # succeeded, failed, in_doubt, running, waiting, interrupted
    result: object = None
    error: object = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    attempts: int = 0
    decided_by: str = ""
    # A completed write: the tool that would undo it, or "" when it is irreversible.
    undone_by: str = ""
    # The person's decision on this step, where it needed one (tools.models.Approval).
    approval: object = None
    # Its failed attempts, oldest first, where it was tried more than once (or gave up).
    failures: list = field(default_factory=list)
    # One of the same calls in a row that parked the run as a loop.
    repeated: bool = False

    @property
    def edits(self):
        """What the approver changed in the arguments the agent asked for."""
        return self.approval.changes if self.approval is not None else []

    @property
    def is_completed_write(self):
        return self.kind == JournalEntry.Kind.TOOL and self.effect in WRITING_EFFECTS and self.status == "succeeded"

    @property
    def duration_ms(self):
        # A step that records only its outcome has no recorded start.
        if len(self.rows) > 1 and self.started_at and self.ended_at:
            return (self.ended_at - self.started_at).total_seconds() * 1000
        return None

    @property
    def kind_label(self):
        return JournalEntry.Kind(self.kind).label if self.kind in JournalEntry.Kind.values else self.kind


def build_steps(run: Run, rows, approvals=(), repeated=()):
    """Steps in seq order from journal rows (ordered by seq, attempt, id), each with the
    decision on its approval request, if it had one; `repeated`: the seqs of a loop."""
    steps = {}
    for row in rows:
        step = steps.get(row.seq)
        if step is None:
            step = steps[row.seq] = StepView(
                seq=row.seq, kind=row.kind, name=row.name, effect=row.effect,
                idempotency_key=row.idempotency_key, args=row.args, started_at=row.created_at,
            )
        step.rows.append(row)
        step.attempts = max(step.attempts, row.attempt)
        if row.args is not None and step.args is None:
            step.args = row.args
        if row.phase == P.OUTCOME:
            step.ended_at = row.created_at
            step.status = row.status
            step.result, step.error = row.result, row.error
            if not row.actor.startswith("worker:"):
                step.decided_by = row.actor
        else:
            step.status = "running"
    decided = {approval.seq: approval for approval in approvals}
    redact = Redactor(step.name for step in steps.values() if step.kind == JournalEntry.Kind.TOOL)
    for step in steps.values():
        step.approval = decided.get(step.seq)
        step.repeated = step.seq in repeated
        step.failures = _failures(step.rows)
        # Sensitive arguments are kept for replay and never shown.
        step.args = redact(step.name, step.args) if step.kind == JournalEntry.Kind.TOOL else step.args
        spec = TOOLS.get(step.name) if step.kind == JournalEntry.Kind.TOOL else None
        step.undone_by = spec.compensation_tool if spec else ""
        last = step.rows[-1]
        if last.phase == P.INTENT:
            step.ended_at = None
            if step.kind == JournalEntry.Kind.SLEEP:
                step.status = "waiting" if run.status == S.WAITING else "sleeping"
            elif JournalEntry.is_open_call(last) and run.status == S.NEEDS_ATTENTION:
                step.status = "in_doubt"
            elif run.status != S.RUNNING:
                step.status = "interrupted"
        elif last.status == JournalEntry.Status.ABANDONED:
            step.status = "running"
        elif last.status == RETRY:
            step.status = _retry_status(run, last)
    return [steps[seq] for seq in sorted(steps)]


def _failures(rows):
    """A step's failed attempts, if it had retries: its outcome rows that failed and were (to
    be) tried again, and the failure that ended them. Refusals and an operator's decision made
    no call, and are no attempts."""
    failed = [row for row in rows if row.phase == P.OUTCOME and row.status in (RETRY, JournalEntry.Status.FAILED)
              and not (row.error or {}).get("not_called")]
    if not any(row.status == RETRY for row in failed):
        return []
    return [FailedAttempt.of(row) for row in failed]


def _retry_status(run, last):
    granted = (run.retry_grant_seq, run.retry_grant_after) == (last.seq, last.attempt)
    if (last.error or {}).get("exhausted") and not granted:
        return OUT_OF_ATTEMPTS
    return WILL_RETRY


@dataclass
class RetryPanel:
    """The step an operator may retry now: the one the run waits to try again (its backoff, or
    its tool's open breaker), or the one that ran out of attempts."""

    seq: int
    step: StepView | None  # None: not called yet (its tool's breaker held its first attempt)
    out_of_attempts: bool
    wake_at: datetime | None  # when the waiting run tries the step again

    @property
    def breaker_open(self):
        """It waits for its tool's breaker, not out a backoff: it was never called, or its wait
        ends after the backoff its last failed attempt chose."""
        if self.out_of_attempts:
            return False
        failures = self.step.failures if self.step else []
        due = failures[-1].next_at if failures else None
        return due is None or (self.wake_at is not None and self.wake_at > due)

    @property
    def state(self):
        """What the page shows of it: the consumer resends the panel when this changes."""
        return (self.seq, self.out_of_attempts, self.wake_at, len(self.step.rows) if self.step else 0)


def retry_panel(run: Run, last_seq):
    if run.status == S.WAITING and run.wait_kind == WaitKind.RETRY:
        seq, out = int(run.wait_ref), False
    elif run.status == S.NEEDS_ATTENTION and run.parked_by == ParkedBy.RETRIES:
        seq, out = last_seq, True  # the run stopped at the step that gave up: its last
    else:
        return None
    steps = build_steps(run, list(JournalEntry.objects.filter(run=run, seq=seq).order_by("attempt", "id")))
    return RetryPanel(seq=seq, step=steps[0] if steps else None, out_of_attempts=out,
                      wake_at=None if out else run.wake_at)


# Budgets ---------------------------------------------------------------------------------------

NEAR_LIMIT = 0.8  # a budget bar turns amber here, and red at its limit


@dataclass(frozen=True)
class SpendRow:
    """The columns of a journal row that runs.budgets counts."""

    seq: int
    attempt: int
    phase: str
    kind: str
    status: str
    result: object
    error: object


@dataclass(frozen=True)
class BudgetUse:
    key: str
    label: str
    limit: float | None  # None: no limit
    used: float
    level: str  # "", "near" (NEAR_LIMIT or more of it), "over" (at or over it)

    @property
    def percent(self):
        if self.limit is None:
            return 0
        return 100 if self.limit <= 0 else min(100, self.used / self.limit * 100)


@dataclass(frozen=True)
class Spending:
    limits: dict
    uses: list
    spent: object  # runs.budgets.Spent: retries, retry_seconds and retry_tokens too
    repeated: list  # the seqs of the trailing same tool calls in a row


def spending(run: Run):
    """The run's limits (its agent's, under its own) against what its whole journal spent, as
    runs.budgets counts it for the recorder. One query; a row's result is read only for LLM
    outcomes (their tokens and cost), never a tool's, which may be large."""
    rows = (JournalEntry.objects.filter(run=run).order_by("seq", "attempt", "id")
            .annotate(llm_result=Case(When(kind=JournalEntry.Kind.LLM, phase=P.OUTCOME, then=F("result")),
                                      output_field=JSONField()))
            .values_list("seq", "attempt", "phase", "kind", "name", "args_hash", "status", "llm_result", "error"))
    counted, trail, followed = [], Trail(), 0
    for seq, attempt, phase, kind, name, args_hash, status, result, error in rows:
        counted.append(SpendRow(seq, attempt, phase, kind, status, result, error))
        if seq > followed:  # each step once, as the recorder follows them
            followed = seq
            if kind == JournalEntry.Kind.TOOL:
                trail.follow(seq, name, args_hash)
            elif kind == JournalEntry.Kind.SLEEP:
                trail.break_off()
    spent = spent_from(counted)
    repeated = trail.seqs
    declared = AGENTS.get(run.agent)
    limits = limits_for(declared.budget if declared else None, run.budget)
    used = {**{key: getattr(spent, key) for key in KEYS if key != "repeats"}, "repeats": len(repeated)}
    uses = []
    for key in KEYS:
        limit = limits.get(key)
        over = limit is not None and (used[key] >= limit or (key == "repeats" and run.parked_by == ParkedBy.LOOP))
        near = limit is not None and used[key] >= NEAR_LIMIT * limit
        uses.append(BudgetUse(key, LABELS[key], limit, used[key], "over" if over else "near" if near else ""))
    return Spending(limits=limits, uses=uses, spent=spent, repeated=repeated)


# The waterfall ---------------------------------------------------------------------------------
#
# One lane per step of the shown window and one per wait, in the order they began, against a
# time axis scaled to the window's span. Waits come from data: a sleep is a step of its own; an
# approval is its request (requested_at to decided_at, open while pending); a freeze and a child
# run are the run's stays in waiting, whose event rows record the wait's kind and reference.

WAIT_KINDS_FROM_EVENTS = {WaitKind.FREEZE, WaitKind.CHILD}
MIN_BAR_PERCENT = 0.6  # a step of a millisecond in a run of a day stays visible
TICK_STEPS = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400,
]
MAX_TICKS = 8


@dataclass
class Lane:
    label: str  # what the lane is: "#3 tool send_email", "approval of send_email"
    css: str  # a step's status, or "wait wait-KIND"
    start: datetime
    end: datetime | None  # None: still going on now
    note: str = ""  # beside the bar: its duration, what was waited for and how it ended
    seq: int | None = None
    is_wait: bool = False
    is_step: bool = False  # a journal step: its label links to the step below
    approval_id: int | None = None  # an approval request: its label links to its page
    # False for a step that records only its outcome: it has a moment, not a duration.
    timed: bool = True
    left: float = 0.0  # percent of the axis
    width: float = 0.0
    note_after: bool = True  # the note stands right of the bar (else left of it)
    # A bar with no room on either side (it spans most of the axis) carries its note inside.
    note_inside: bool = False
    # Waits drawn over the step's own bar: its backoffs, and its tool's breaker holding it.
    waits: list = field(default_factory=list)
    reach: float = 0.0  # percent of the axis where the lane's last mark ends

    @property
    def note_at(self):
        """Where the note stands: the bar's end (from the left), or its start (from the right),
        or, inside the bar, its start (from the left)."""
        if self.note_inside:
            return self.left
        return self.reach if self.note_after else 100 - self.left


@dataclass
class Segment:
    """A wait inside a step's lane (runs.models.WaitKind.RETRY): "backoff" after a failed
    attempt, or "breaker" while its tool's circuit breaker was open."""

    kind: str
    start: datetime
    end: datetime | None
    title: str
    left: float = 0.0
    width: float = 0.0


def readable_seconds(seconds):
    """An axis label: 0, 250 ms, 1.5 s, 30 s, 2 min, 1 min 30 s, 2 h, 1 h 30 min, 3 d."""
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    if seconds < 60:
        return f"{seconds:g} s"
    for unit, name, smaller, smaller_name in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if seconds >= unit:
            whole, rest = divmod(round(seconds), unit)
            return f"{whole} {name}" + (f" {rest // smaller} {smaller_name}" if rest // smaller else "")
    return f"{seconds:g} s"


def ticks(span):
    """(percent, label) for round times from 0 to span, at most MAX_TICKS + 1 of them."""
    step = next((step for step in TICK_STEPS if span / step <= MAX_TICKS), TICK_STEPS[-1])
    count = int(span / step + 1e-9)
    return [(n * step / span * 100, readable_seconds(round(n * step, 3))) for n in range(count + 1)]


def _step_lane(step):
    name = step.name
    if step.kind == JournalEntry.Kind.SLEEP:
        name = readable_seconds(float((step.args or {}).get("seconds", 0)))
    lane = Lane(label=f"#{step.seq} {step.kind_label.lower()} {name}".rstrip(), css=f"bar-{step.status}",
                start=step.started_at, end=step.ended_at, seq=step.seq, is_step=True)
    if step.kind == JournalEntry.Kind.SLEEP:
        lane.is_wait, lane.css = True, f"wait wait-sleep bar-{step.status}"
        wake_at = (step.args or {}).get("wake_at")
        if step.ended_at:
            lane.note = "slept"
        elif wake_at:
            lane.note = f"sleeping until {localtime(datetime.fromisoformat(wake_at)):%H:%M:%S %Z}"
        else:
            lane.note = "sleeping"
    elif step.ended_at is None:
        lane.note = step.status.replace("_", " ")
    elif step.duration_ms is None:
        lane.timed, lane.note = False, step.status.replace("_", " ")
    elif step.status in (WILL_RETRY, OUT_OF_ATTEMPTS):
        lane.note = step.status.replace("_", " ")
    if step.failures:
        lane.note = " · ".join(part for part in (lane.note, f"{step.attempts} attempts" if step.attempts > 1 else "") if part)
    return lane


APPROVAL_ENDED = {
    A.APPROVED: "approved by {by}", A.DENIED: "denied by {by}: {reason}", A.EXPIRED: "expired: nobody decided",
    A.WITHDRAWN: "{reason}",
}


def _approval_lane(approval):
    by = Actor.from_label(approval.decided_by).name or approval.decided_by
    if approval.status == A.PENDING:
        note = f"waiting for approval of {approval.tool}"
    else:
        note = APPROVAL_ENDED.get(approval.status, approval.status).format(by=by, reason=approval.reason)
        if approval.status == A.APPROVED and approval.changes:
            note += " with edits"
    return Lane(label=f"#{approval.seq} approval of {approval.tool}", css=f"wait wait-approval approval-{approval.status}",
                start=approval.requested_at, end=approval.decided_at, note=note, seq=approval.seq, is_wait=True,
                approval_id=approval.id)


def _stays(run, events, kinds):
    """The run's stays in waiting for these kinds of wait, from its event record: [event that
    began it, its end or None while it lasts]."""
    stays, open_stay = [], None
    for event in events:
        if open_stay is not None and event.kind == RunEvent.Kind.TRANSITION and event.from_status == S.WAITING:
            open_stay[1], open_stay = event.at, None
        if (event.kind == RunEvent.Kind.TRANSITION and event.to_status == S.WAITING
                and (event.details or {}).get("wait_kind") in kinds):
            open_stay = [event, None]
            stays.append(open_stay)
    if open_stay is not None and run.status != S.WAITING:
        open_stay[1] = run.finished_at or run.updated_at
    return stays


def _event_waits(run, events):
    """The run's stays in waiting for a freeze or a child run, each a lane of its own."""
    lanes = []
    for event, end in _stays(run, events, WAIT_KINDS_FROM_EVENTS):
        kind, ref = event.details["wait_kind"], event.details.get("wait_ref", "")
        if kind == WaitKind.CHILD:
            label, note = f"child run {ref[:8]}", f"waiting for child run {ref[:8]}"
        else:
            label, note = "freeze", event.reason or "frozen"
        lanes.append(Lane(label=label, css=f"wait wait-{kind}", start=event.at, end=end, note=note, is_wait=True))
    return lanes


def _retry_waits(run, events, steps):
    """The run's stays in waiting for a step to be tried again, as segments of that step's lane
    ({seq: [Segment]}). A stay that began before the due time of the step's last failed attempt
    waits out its backoff; any other waits for its tool's breaker (which leaves no journal row)."""
    rows = {step.seq: step.rows for step in steps}
    waits = {}
    for event, end in _stays(run, events, {WaitKind.RETRY}):
        seq = int(event.details.get("wait_ref") or 0)
        failed = [row for row in rows.get(seq, []) if row.phase == P.OUTCOME and row.status == RETRY
                  and row.created_at <= event.at]
        due = (failed[-1].error or {}).get("next_at") if failed else None
        if due and datetime.fromisoformat(due) > event.at:
            segment = Segment("backoff", event.at, end, f"backoff after attempt {failed[-1].attempt}: "
                                                        f"{readable_seconds(failed[-1].error.get('delay_s') or 0)}")
        else:
            segment = Segment("breaker", event.at, end, event.reason or "the tool's breaker is open")
        waits.setdefault(seq, []).append(segment)
    return waits


def _waits_note(segments, wake_at):
    """How a step's lane sums up its waits: "backoff 1.5 s + 3 s", "breaker open until 10:02:03 UTC"."""
    parts = []
    for kind, name in (("backoff", "backoff"), ("breaker", "breaker open")):
        of_kind = [s for s in segments if s.kind == kind]
        closed = [readable_seconds(round((s.end - s.start).total_seconds(), 1)) for s in of_kind if s.end]
        if closed:
            parts.append(f"{name} {' + '.join(closed)}")
        if any(s.end is None for s in of_kind) and wake_at:
            parts.append(f"{name} until {localtime(wake_at):%H:%M:%S %Z}")
    return " · ".join(parts)


def waterfall(run: Run, steps, now, *, events=(), approvals=(), window=None):
    """The lanes of the shown window (its steps, the waits among them) against time.

    The axis spans the window: from the run's start when the window begins at step 1, else from
    its first step; to the run's end (or now) when the window holds the last step, else to its
    last step's end. A zoomed window thus fills the width, however long the whole run.
    """
    window = window or {}
    first = window.get("first", 1)
    last = window.get("last", steps[-1].seq if steps else 0)
    holds_last = window.get("later") is None
    lanes = [_step_lane(step) for step in steps]

    def in_window(seq):
        return first <= seq <= last or (holds_last and seq > last)

    lanes += [_approval_lane(a) for a in approvals if in_window(a.seq)]
    by_seq = {lane.seq: lane for lane in lanes if lane.is_step}
    for seq, segments in _retry_waits(run, events, steps).items():
        lane = by_seq.get(seq)
        if lane is None and in_window(seq):
            # Its tool's breaker held the step before its first call: no step lane to draw in.
            lane = Lane(label=f"#{seq} breaker open", css="wait wait-breaker", start=segments[0].start, end=segments[-1].end,
                        note=segments[-1].title, seq=seq, is_wait=True)
            lanes.append(lane)
        elif lane is not None:
            lane.waits = segments
            wake_at = run.wake_at if run.wait_kind == WaitKind.RETRY and run.wait_ref == str(seq) else None
            lane.note = " · ".join(part for part in (lane.note, _waits_note(segments, wake_at)) if part)
    starts = [lane.start for lane in lanes]
    ends = [lane.end or now for lane in lanes] + [s.end or now for lane in lanes for s in lane.waits]
    if first <= 1 and run.started_at:
        starts.append(run.started_at)
    if holds_last and run.started_at:
        ends.append(run.finished_at or now)
    if not starts:
        return None
    t0, t1 = min(starts), max(ends)
    lanes += [lane for lane in _event_waits(run, events) if lane.start < t1 and (lane.end or now) > t0]
    if not lanes:
        return None
    span = max((t1 - t0).total_seconds(), 0.001)
    for lane in lanes:
        begin = max(0.0, (lane.start - t0).total_seconds()) / span * 100
        finish = min(span, ((lane.end or now) - t0).total_seconds()) / span * 100
        lane.width = max(MIN_BAR_PERCENT, finish - begin)
        lane.left = min(begin, 100 - lane.width)
        for segment in lane.waits:
            begin = max(0.0, (segment.start - t0).total_seconds()) / span * 100
            finish = min(span, ((segment.end or now) - t0).total_seconds()) / span * 100
            segment.width = max(MIN_BAR_PERCENT, finish - begin)
            segment.left = min(begin, 100 - segment.width)
        lane.reach = max([lane.left + lane.width] + [s.left + s.width for s in lane.waits])
        lane.note_after = lane.reach < 60
        lane.note_inside = not lane.note_after and lane.left < 40
        lane.note_after = lane.note_after or lane.note_inside
        if lane.timed:
            lane.note = _with_duration(lane.note, ((lane.end or now) - lane.start).total_seconds() * 1000, lane.end is None)
    lanes.sort(key=lambda lane: (lane.start, lane.seq or 0, not lane.is_wait))
    return {
        "lanes": lanes,
        "ticks": ticks(span),
        "start": t0,
        "end": t1,
        "span": t1 - t0,
        "open": any(lane.end is None or any(s.end is None for s in lane.waits) for lane in lanes),
    }


def _with_duration(note, ms, still_going):
    """The lane's note and how long it took: "slept, 3.0 s", "waiting for ... (2 min so far)"."""
    seconds = ms / 1000
    duration = f"{ms:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 60 else readable_seconds(seconds)
    if still_going:
        return f"{note} ({duration} so far)" if note else f"{duration} so far"
    return f"{note}, {duration}" if note else duration
