"""Demo agents and tools for `make up`: a support desk that refunds orders, emails customers
and closes their tickets.

The "outside world" is the tables of tools.demo.models: refunds (a provider that dedupes on the
idempotency key, and can take a refund back) and sent emails (a mail service that does not
dedupe, and cannot unsend). The helpdesk refuses to close the ticket of order A-1003 (a
supervisor locked it), so that order's run fails after its refund and email: a run to roll back.
"""

from django.utils import timezone
from pydantic import BaseModel, Field

from runs.agents import agent
from runs.recorder import ToolError
from tools.demo.models import Refund, SentEmail
from tools.registry import Compensation, tool

ORDERS = {
    "A-1001": {"id": "A-1001", "email": "ann@example.com", "total_cents": 4200, "item": "kettle"},
    "A-1002": {"id": "A-1002", "email": "bo@example.com", "total_cents": 1999, "item": "mug set"},
    "A-1003": {"id": "A-1003", "email": "cy@example.com", "total_cents": 12900, "item": "lamp",
               "ticket_locked": True},
}


class OrderLookup(BaseModel):
    order_id: str = Field(min_length=1, max_length=50)


@tool(effect="read")
def lookup_order(args: OrderLookup) -> dict:
    """Look up an order by its id."""
    try:
        return ORDERS[args.order_id]
    except KeyError:
        raise LookupError(f"there is no order {args.order_id!r}") from None


class RefundArgs(BaseModel):
    order_id: str = Field(min_length=1, max_length=50)
    amount_cents: int = Field(gt=0)


class ReverseRefundArgs(BaseModel):
    refund_id: int


@tool(effect="write", idempotent=True)
def reverse_refund(args: ReverseRefundArgs, *, idempotency_key: str) -> dict:
    """Take a refund back (the compensation of issue_refund). Taking it back twice does nothing."""
    Refund.objects.filter(id=args.refund_id, reversed_at__isnull=True).update(
        reversed_at=timezone.now(), reversal_key=idempotency_key
    )
    refund = Refund.objects.get(id=args.refund_id)
    return {"refund_id": refund.id, "reversed_at": refund.reversed_at.isoformat()}


@tool(
    effect="write",
    idempotent=True,
    compensation=Compensation("reverse_refund", lambda args, result: {"refund_id": result["refund_id"]}),
)
def issue_refund(args: RefundArgs, *, idempotency_key: str) -> dict:
    """Refund an order through the payment provider, which dedupes on the idempotency key."""
    refund, _ = Refund.objects.get_or_create(
        idempotency_key=idempotency_key,
        defaults={"order_id": args.order_id, "amount_cents": args.amount_cents},
    )
    return {"refund_id": refund.id, "amount_cents": refund.amount_cents}


class EmailArgs(BaseModel):
    to: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    subject: str = Field(min_length=1, max_length=200)
    body: str


@tool(effect="write")
def send_email(args: EmailArgs, *, idempotency_key: str) -> dict:
    """Send an email. The mail service sends every request: it cannot dedupe."""
    email = SentEmail.objects.create(
        to=args.to, subject=args.subject, body=args.body, idempotency_key=idempotency_key
    )
    return {"email_id": email.id}


class Ticket(BaseModel):
    order_id: str = Field(min_length=1, max_length=50)


@tool(effect="write", idempotent=True)
def reopen_ticket(args: Ticket, *, idempotency_key: str) -> dict:
    """Reopen a customer's ticket (the compensation of close_ticket)."""
    return {"reopened": args.order_id}


@tool(effect="write", idempotent=True,
      compensation=Compensation("reopen_ticket", lambda args, result: {"order_id": args["order_id"]}))
def close_ticket(args: Ticket, *, idempotency_key: str) -> dict:
    """Mark the customer's ticket solved in the helpdesk."""
    if ORDERS.get(args.order_id, {}).get("ticket_locked"):
        raise PermissionError(f"the helpdesk refused: the ticket of order {args.order_id} is locked by a supervisor")
    return {"closed": args.order_id}


class RefundRequest(BaseModel):
    order_id: str
    # Time the agent "thinks" between looking and acting; a sleep that releases the worker.
    think_seconds: float = Field(default=3, ge=0, le=86400)


class RefundResult(BaseModel):
    refund_id: int
    # None when an operator denied the email: the refund stands, and the note says why.
    email_id: int | None
    note: str = ""


@agent("refund_customer")
def refund_customer(ctx, request: RefundRequest) -> RefundResult:
    order = ctx.tool("lookup_order", order_id=request.order_id)
    ctx.sleep(request.think_seconds)
    refund = ctx.tool("issue_refund", order_id=order["id"], amount_cents=order["total_cents"])
    try:
        email = ctx.tool(
            "send_email",
            to=order["email"],
            subject=f"Your refund for order {order['id']}",
            body=f"We refunded {order['total_cents'] / 100:.2f} for your {order['item']}.",
        )
    except ToolError as error:
        if error.type != "denied":
            raise
        # An operator said no to the email: the refund stands, the customer is not written to.
        email = {"email_id": None, "note": f"the email was not sent: {error.message}"}
    ctx.tool("close_ticket", order_id=order["id"])
    return RefundResult(refund_id=refund["refund_id"], email_id=email["email_id"], note=email.get("note", ""))


class BatchRequest(BaseModel):
    order_ids: list[str] = Field(min_length=1, max_length=20)


class BatchResult(BaseModel):
    refunds: dict[str, int]


@agent("refund_batch")
def refund_batch(ctx, request: BatchRequest) -> BatchResult:
    """Refunds several orders, one child run each, and waits for all of them."""
    children = {order_id: ctx.start_child("refund_customer", {"order_id": order_id, "think_seconds": 1})
                for order_id in request.order_ids}
    results = {order_id: ctx.wait_child(child) for order_id, child in children.items()}
    return BatchResult(refunds={order_id: result["refund_id"] for order_id, result in results.items()})
