from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class SkydeckSiteConfig(AppConfig):
    """Makes the runtime folders when a process starts: web, worker, beat or a command.

    The settings only name them, so importing the settings has no side effect;
    every process sets up Django before it opens the database or the broker.
    """

    name = "skydeck_site"
    verbose_name = "SkyDeck site"

    def ready(self):
        for folder in settings.SKYDECK_RUNTIME_DIRS:
            Path(folder).mkdir(parents=True, exist_ok=True)
