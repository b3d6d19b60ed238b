from django.urls import path

from . import sweep_views, views

app_name = "experiments"

urlpatterns = [
    path("", views.experiment_list, name="list"),
    path("experiments/new/", views.experiment_create, name="create"),
    path("experiments/<slug:name>/", views.experiment_detail, name="detail"),
    path("experiments/<slug:name>/state/", views.experiment_set_state, name="set_state"),
    path("experiments/<slug:name>/jobs/<int:attempt>/", views.job_detail, name="job_detail"),
    path("sweeps/", sweep_views.sweep_list, name="sweep_list"),
    path("sweeps/<slug:name>/", sweep_views.sweep_detail, name="sweep_detail"),
]
