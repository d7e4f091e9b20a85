from django.urls import path

from tools.demo import views

app_name = "demo"
urlpatterns = [path("", views.world, name="world")]
