"""A run's journal as people read it: steps (the rows of one seq together) and a waterfall."""

from dataclasses import dataclass, field
from datetime import datetime

from django.utils.timezone import localtime

from runs.actors import Actor
from runs.models import JournalEntry, Run, RunEvent, RunStatus, WaitKind
from tools.models import ApprovalStatus
from tools.models import Redactor
from tools.registry import TOOLS, WRITING_EFFECTS

S = RunStatus
A = ApprovalStatus
P = JournalEntry.Phase


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


def build_steps(run: Run, rows, approvals=()):
    """Steps in seq order from journal rows (ordered by seq, attempt, id), each with the
    decision on its approval request, if it had one."""
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
    return [steps[seq] for seq in sorted(steps)]


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

    @property
    def note_at(self):
        """Where the note stands: the bar's end (from the left), or its start (from the right),
        or, inside the bar, its start (from the left)."""
        if self.note_inside:
            return self.left
        return self.left + self.width if self.note_after else 100 - self.left


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


def _event_waits(run, events):
    """The run's stays in waiting for a freeze or a child run, from its event record."""
    lanes, open_lane = [], None
    for event in events:
        if open_lane is not None and event.kind == RunEvent.Kind.TRANSITION and event.from_status == S.WAITING:
            open_lane.end, open_lane = event.at, None
        if event.kind == RunEvent.Kind.TRANSITION and event.to_status == S.WAITING:
            details = event.details or {}
            kind, ref = details.get("wait_kind"), details.get("wait_ref", "")
            if kind not in WAIT_KINDS_FROM_EVENTS:
                continue
            if kind == WaitKind.CHILD:
                label, note = f"child run {ref[:8]}", f"waiting for child run {ref[:8]}"
            else:
                label, note = "freeze", event.reason or "frozen"
            open_lane = Lane(label=label, css=f"wait wait-{kind}", start=event.at, end=None, note=note, is_wait=True)
            lanes.append(open_lane)
    if open_lane is not None and run.status != S.WAITING:
        open_lane.end = run.finished_at or run.updated_at
    return lanes


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
    lanes += [_approval_lane(a) for a in approvals
              if first <= a.seq <= last or (holds_last and a.seq > last)]
    starts = [lane.start for lane in lanes]
    ends = [lane.end or now for lane in lanes]
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
        lane.note_after = lane.left + lane.width < 60
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
        "open": any(lane.end is None for lane in lanes),
    }


def _with_duration(note, ms, still_going):
    """The lane's note and how long it took: "slept, 3.0 s", "waiting for ... (2 min so far)"."""
    seconds = ms / 1000
    duration = f"{ms:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 60 else readable_seconds(seconds)
    if still_going:
        return f"{note} ({duration} so far)" if note else f"{duration} so far"
    return f"{note}, {duration}" if note else duration
