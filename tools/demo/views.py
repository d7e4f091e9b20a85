from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from runs.roles import permission_required
from tools.demo.models import Refund, SentEmail

SHOWN = 100


@permission_required("runs.view_run", raise_exception=True)
def world(request: HttpRequest) -> HttpResponse:
    """The demo's outside world: what the agents did to it, and what rollbacks took back."""
    return render(request, "demo/world.html", {
        "refunds": list(Refund.objects.all()[:SHOWN]),
        "emails": list(SentEmail.objects.all()[:SHOWN]),
    })
