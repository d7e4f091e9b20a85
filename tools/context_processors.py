from django.apps import apps

from tools.models import Approval, ApprovalStatus, FreezeState


def pending_approvals(request):
    """The count in the navigation."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"pending_approvals": pending_approval_count()}


def freeze(request):
    """What is frozen now, for the banner every page shows while a freeze holds."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"freeze": freeze_shown()}


def pending_approval_count():
    return Approval.objects.filter(status=ApprovalStatus.PENDING).count()


def freeze_shown():
    """The freeze as the banner shows it, or None. The page and the live chrome both use it."""
    state = FreezeState.current()
    if state is None or not (state.global_reason or state.agents):
        return None
    return {"global_reason": state.global_reason, "agents": sorted(state.agents.items())}


def demo(request):
    """Whether the demo is loaded, for its link in the navigation."""
    return {"demo_loaded": apps.is_installed("tools.demo")}
