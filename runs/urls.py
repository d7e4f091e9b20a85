from django.urls import path

from runs import history, operations, starting, views

app_name = "runs"
urlpatterns = [
    path("", views.run_list, name="list"),
    path("runs/<uuid:run_id>/", views.run_detail, name="detail"),
    path("runs/<uuid:run_id>/rollback/", views.rollback_page, name="rollback"),
    path("runs/<uuid:run_id>/rollback/resolve/", views.resolve_rollback, name="resolve_rollback"),
    path("runs/start/", starting.choose_agent, name="start"),
    path("runs/start/<str:agent_name>/", starting.start_form, name="start_agent"),
    path("runs/<uuid:run_id>/history.json", history.download_history, name="history"),
    path("runs/<uuid:run_id>/input.json", history.download_part, {"part": "input"}, name="input"),
    path("runs/<uuid:run_id>/output.json", history.download_part, {"part": "output"}, name="output"),
    # Before the action pattern below, which "run-again" would match too.
    path("runs/<uuid:run_id>/run-again/", starting.run_again, name="run_again"),
    path("runs/<uuid:run_id>/budget/", views.raise_budget, name="raise_budget"),
    path("runs/<uuid:run_id>/<slug:action>/", views.run_action, name="action"),
    path("runs/<uuid:run_id>/steps/<int:seq>/resolve/", views.resolve_step, name="resolve"),
    path("runs/<uuid:run_id>/steps/<int:seq>/retry/", views.retry_step, name="retry_step"),
    path("audit/", views.audit_list, name="audit"),
    path("runs/<uuid:run_id>/fork/<int:seq>/", views.fork_run, name="fork"),
    path("workers/", operations.workers_page, name="workers"),
    path("activity/", operations.activity_page, name="activity"),
    path("metrics", operations.prometheus_metrics, name="prometheus"),
]
