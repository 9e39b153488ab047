from django.contrib import admin
from django.urls import path

from core import views

urlpatterns = [
    path("health/", views.health, name="health"),
    path("api/v1/status/", views.status, name="status"),
    path("api/v1/version/", views.version, name="version"),
    path("api/v1/auth/login/", views.login_view, name="login"),
    path("api/v1/tasks/", views.enqueue, name="enqueue"),
    path("api/v1/tasks/<str:task_id>/", views.task_result, name="task-result"),
    path("api/v1/media/", views.media_upload, name="media-upload"),
    path("api/v1/media/<path:key>", views.media_file, name="media-file"),
    path("api/v1/sentry-check/", views.sentry_check, name="sentry-check"),
    path("admin/", admin.site.urls),
    path("", views.index, name="index"),
]
