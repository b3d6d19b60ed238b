from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self):
        from django.db.models.signals import post_save

        from .flags import learn_on_save
        from .models import Experiment

        # Flags in use become schema rows, so typeahead helps before any model is imported.
        post_save.connect(learn_on_save, sender=Experiment, dispatch_uid="experiments.learn_flags")
