from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tools.models import Tool, ToolPermission


@permission_required("tools.view_tool", raise_exception=True)
def tool_list(request: HttpRequest) -> HttpResponse:
    tools = list(Tool.objects.prefetch_related("permissions"))
    rows = [
        {
            "tool": tool,
            "for_all": ToolPermission.objects.decide_from(tool, list(tool.permissions.all()), agent=""),
            "agent_rules": [p for p in tool.permissions.all() if p.agent],
        }
        for tool in tools
    ]
    return render(request, "tools/list.html", {"rows": rows})
