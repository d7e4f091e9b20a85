from django.urls import path

from tools import views

app_name = "tools"
urlpatterns = [
    path("", views.tool_list, name="list"),
    path("freeze/", views.freeze_set, name="freeze"),
    path("unfreeze/", views.freeze_lift, name="unfreeze"),
    path("breakers/reset/", views.breaker_reset, name="breaker_reset"),
    path("approvals/", views.approval_list, name="approvals"),
    path("approvals/<int:approval_id>/", views.approval_detail, name="approval"),
    path("approvals/<int:approval_id>/decide/", views.approval_decide, name="decide"),
]
