from django.urls import path

from . import views

app_name = "clusters"

urlpatterns = [
    path("", views.cluster_list, name="list"),
    path("<str:backend>/<str:name>/<str:action>/", views.cluster_action, name="action"),
]
