"""The Celery app: a worker runs reconcile and poll tasks, beat schedules them."""

import os

from billiard import current_process
from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")

app = Celery("skydeck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def leave_the_worker_process_group(**kwargs):
    """A pool process stops when its worker tells it to, not on a signal sent to the whole group.

    honcho (`make run`) stops a Procfile entry with SIGTERM to its process group; a pool
    process that got it too would die mid-task instead of finishing it in the worker's warm
    shutdown. It still dies with the worker: Celery sets SIGKILL as its parent-death signal.
    The solo pool sends this signal in the worker itself, which stays where it is.
    """
    if current_process().name != "MainProcess":
        os.setpgid(0, 0)
