from django.urls import path

from skydeck_site.views import favicon

from . import form_views, log_views, sweep_views, views

app_name = "experiments"

urlpatterns = [
    path("", views.experiment_list, name="list"),
    path("favicon.ico", favicon, name="favicon"),
    path("experiments/bulk/", views.experiment_bulk, name="bulk"),
    path("experiments/flags/columns/", views.experiment_columns, name="flag_columns"),
    path("experiments/new/", form_views.experiment_create, name="create"),
    path("experiments/flags/row/", form_views.flag_row, name="flag_row"),
    path("experiments/flags/search/", form_views.flag_search, name="flag_search"),
    path("experiments/preview/", form_views.command_preview, name="preview"),
    path("experiments/<slug:name>/", views.experiment_detail, name="detail"),
    path("experiments/<slug:name>/edit/", form_views.experiment_edit, name="edit"),
    path("experiments/<slug:name>/clone/", form_views.experiment_clone, name="clone"),
    path("experiments/<slug:name>/state/", views.experiment_set_state, name="set_state"),
    path("experiments/<slug:name>/restart/", views.experiment_restart, name="restart"),
    path("experiments/<slug:name>/star/", views.experiment_star, name="star"),
    path("experiments/<slug:name>/delete/", views.experiment_delete, name="delete"),
    path("experiments/<slug:name>/jobs/<int:attempt>/", views.job_detail, name="job_detail"),
    path("experiments/<slug:name>/jobs/<int:attempt>/log/", log_views.job_log, name="job_log"),
    path("sweeps/", sweep_views.sweep_list, name="sweep_list"),
    path("sweeps/new/", sweep_views.sweep_create, name="sweep_create"),
    path("sweeps/preview/", sweep_views.sweep_preview, name="sweep_preview"),
    path("sweeps/<slug:name>/", sweep_views.sweep_detail, name="sweep_detail"),
    path("sweeps/<slug:name>/state/", sweep_views.sweep_set_state, name="sweep_set_state"),
    path("sweeps/<slug:name>/rerun-failed/", sweep_views.sweep_rerun_failed, name="sweep_rerun_failed"),
    path("sweeps/<slug:name>/budget/", sweep_views.sweep_budget, name="sweep_budget"),
]
