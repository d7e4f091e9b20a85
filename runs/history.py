"""A run's history as a file: the run, its journal, its events, its approvals and the audit
entries about it, as one JSON document to download (GET /runs/ID/history.json).

Arguments are shown as the pages show them: a tool's sensitive fields redacted. The rows keep
the journal's own order (seq, attempt, id), so the file reads as the run happened.
"""

import json

from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone

from runs.models import JournalEntry, Run
from runs.roles import permission_required
from tools.models import Redactor

FORMAT = "agentops.run-history.v1"


def run_history(run: Run) -> dict:
    rows = list(run.journal.order_by("seq", "attempt", "id"))
    approvals = list(run.approvals.order_by("seq", "id"))
    redact = Redactor({row.name for row in rows if row.kind == JournalEntry.Kind.TOOL} | {a.tool for a in approvals})
    return {
        "format": FORMAT,
        "exported_at": timezone.now(),
        "run": {
            "id": run.id, "agent": run.agent, "status": run.status, "status_reason": run.status_reason,
            "input": run.input, "output": run.output, "error": run.error,
            "idempotency_key": run.idempotency_key, "started_by": run.started_by,
            "parent": run.parent_id, "rollback_of": run.rollback_of_id,
            "forked_from": run.forked_from_id, "forked_at_seq": run.forked_at_seq,
            "children": list(run.children.order_by("created_at", "id").values_list("id", flat=True)),
            "requested": run.requested, "wait_kind": run.wait_kind, "wait_ref": run.wait_ref, "wake_at": run.wake_at,
            "lease_owner": run.lease_owner, "lease_expires_at": run.lease_expires_at, "lease_epoch": run.lease_epoch,
            "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
            "updated_at": run.updated_at,
        },
        "journal": [
            {
                "seq": row.seq, "attempt": row.attempt, "phase": row.phase, "kind": row.kind, "name": row.name,
                "effect": row.effect,
                "args": redact(row.name, row.args) if row.kind == JournalEntry.Kind.TOOL else row.args,
                "args_hash": row.args_hash, "idempotency_key": row.idempotency_key, "status": row.status,
                "result": row.result, "error": row.error, "actor": row.actor, "lease_epoch": row.lease_epoch,
                "created_at": row.created_at,
            }
            for row in rows
        ],
        "events": list(run.events.order_by("at", "id").values(
            "at", "kind", "from_status", "to_status", "actor", "reason", "details")),
        # `args` is already redacted; the private arguments are never shown, so never exported.
        "approvals": [
            {
                "id": approval.id, "seq": approval.seq, "tool": approval.tool, "effect": approval.effect,
                "args": redact(approval.tool, approval.args),
                "edited_args": redact(approval.tool, approval.edited_args),
                "compensation": approval.compensation, "status": approval.status,
                "requested_at": approval.requested_at, "expires_at": approval.expires_at,
                "decided_by": approval.decided_by, "decided_at": approval.decided_at, "reason": approval.reason,
            }
            for approval in approvals
        ],
        "audit": list(run.audit.order_by("at", "id").values("at", "username", "action", "target", "reason", "details")),
    }


@permission_required("runs.view_run", raise_exception=True)
def download_history(request: HttpRequest, run_id) -> HttpResponse:
    run = Run.objects.filter(id=run_id).first()
    if run is None:
        raise Http404("there is no such run")
    response = HttpResponse(json.dumps(run_history(run), cls=DjangoJSONEncoder, indent=2),
                            content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="run-{str(run.id)[:8]}-history.json"'
    return response


@permission_required("runs.view_run", raise_exception=True)
def download_part(request: HttpRequest, run_id, part) -> HttpResponse:
    """A run's whole input or output as a file: the run page shows a large one cut short."""
    run = Run.objects.filter(id=run_id).only(part).first()
    if run is None:
        raise Http404("there is no such run")
    response = HttpResponse(json.dumps(getattr(run, part), indent=2, ensure_ascii=False),
                            content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="run-{str(run.id)[:8]}-{part}.json"'
    return response
