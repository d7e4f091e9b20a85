"""A run's journal as people read it: steps (the rows of one seq together) and a waterfall."""

from dataclasses import dataclass, field
from datetime import datetime

from runs.models import JournalEntry, Run, RunStatus
from tools.registry import TOOLS, WRITING_EFFECTS, redact

S = RunStatus
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


@dataclass
class Bar:
    x: float
    y: int
    width: float
    label: str
    status: str
    seq: int


WATERFALL_ROW = 14
WATERFALL_WIDTH = 900
WATERFALL_MAX_BARS = 400


def waterfall(run: Run, steps, now):
    """Bars of the steps against time, as a trace viewer draws them.

    Gaps between bars are where the run waited (sleeps, approvals, retries, a dead worker).
    A run with more steps than fit shows the last WATERFALL_MAX_BARS, and says so.
    """
    if not steps:
        return None
    start = run.started_at or steps[0].started_at
    end = run.finished_at or now
    span = max((end - start).total_seconds(), 0.001)
    shown = steps[-WATERFALL_MAX_BARS:]
    bars = []
    for row, step in enumerate(shown):
        begin = (step.started_at - start).total_seconds()
        finish = ((step.ended_at or now) - start).total_seconds()
        x = max(0.0, begin / span * WATERFALL_WIDTH)
        width = max(1.5, (finish - begin) / span * WATERFALL_WIDTH)
        bars.append(Bar(x=x, y=row * WATERFALL_ROW, width=min(width, WATERFALL_WIDTH - x),
                        label=f"#{step.seq} {step.name or step.kind}", status=step.status, seq=step.seq))
    return {
        "bars": bars,
        "height": len(bars) * WATERFALL_ROW,
        "width": WATERFALL_WIDTH,
        "span_seconds": span,
        "hidden": len(steps) - len(shown),
    }
