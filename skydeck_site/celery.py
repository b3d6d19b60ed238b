"""The Celery app: a worker runs reconcile and poll tasks, beat schedules them."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")

app = Celery("skydeck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
