from django.apps import AppConfig

from . import enqueue


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self):
        from django.db.models.signals import post_save

        from clusters.backends import local

        from .flags import learn_on_save
        from .models import Experiment

        # Flags in use become schema rows, so typeahead helps before any model is imported.
        post_save.connect(learn_on_save, sender=Experiment, dispatch_uid="experiments.learn_flags")
        # A local job that ends is seen at once: a poll follows its end.
        if job_ended not in local.JOB_END_LISTENERS:
            local.JOB_END_LISTENERS.append(job_ended)


def job_ended(name):
    enqueue.poll_soon(countdown=0)
