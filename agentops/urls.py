from django.apps import apps
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("", include("runs.urls")),
    path("tools/", include("tools.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
]
# The demo's world (refunds, emails), only where the demo is loaded (DEMO=1).
if apps.is_installed("tools.demo"):
    urlpatterns.append(path("demo/", include("tools.demo.urls")))
