"""Files: a SkyPilot task YAML in, an experiment or a job out as one, experiments out as a skydeck.yaml.

Included before ``experiments.urls``, so ``/experiments/import/`` and ``/experiments/export/`` are these
pages and not experiments of those names (which are reserved).
"""

from django.urls import path

from . import file_views

app_name = "files"

urlpatterns = [
    path("experiments/import/", file_views.import_task, name="import"),
    path("experiments/export/", file_views.export_set, name="export"),
    path("experiments/<slug:name>/skypilot.yaml", file_views.experiment_task, name="experiment_task"),
    path("experiments/<slug:name>/jobs/<int:attempt>/skypilot.yaml", file_views.job_task, name="job_task"),
]
