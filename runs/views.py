from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from runs.models import Run


@permission_required("runs.view_run", raise_exception=True)
def run_list(request: HttpRequest) -> HttpResponse:
    runs = Run.objects.all()[:50]
    return render(request, "runs/list.html", {"runs": runs})
