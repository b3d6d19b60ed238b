from django.urls import path

from . import metric_views

app_name = "metrics"

urlpatterns = [
    path("experiments/<slug:name>/metrics.json", metric_views.experiment_metrics, name="experiment"),
    path("experiments/<slug:name>/metrics/pattern/", metric_views.experiment_pattern, name="pattern"),
    path("sweeps/<slug:name>/metrics/", metric_views.sweep_metrics, name="sweep"),
]
