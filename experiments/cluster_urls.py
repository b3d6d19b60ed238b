from django.urls import path

from . import cluster_views

app_name = "clusters"

urlpatterns = [
    path("", cluster_views.cluster_list, name="list"),
    path("orphans/", cluster_views.cluster_bulk, name="bulk"),
    path("<str:backend>/<str:name>/<str:action>/", cluster_views.cluster_action, name="action"),
]
