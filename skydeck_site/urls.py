from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("experiments.api_urls")),
    path("clusters/", include("clusters.urls")),
    path("system/", views.system, name="system"),
    path("", include("experiments.urls")),
]
