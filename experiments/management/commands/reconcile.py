import time

from django.conf import settings
from django.core.management.base import BaseCommand

from experiments import reconciler
from experiments.models import Experiment
from experiments.tasks import run_reconcile_all


class Command(BaseCommand):
    help = "Reconcile once: take the next step for every experiment whose desired state is not yet true."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", help="Only these experiments (default: all that need it).")
        parser.add_argument("--loop", action="store_true", help="Repeat every SKYDECK_RECONCILE_INTERVAL seconds.")

    def handle(self, *args, names=(), loop=False, **options):
        while True:
            if names:
                ids = list(Experiment.objects.filter(name__in=names).values_list("id", flat=True))
                missing = set(names) - set(Experiment.objects.filter(id__in=ids).values_list("name", flat=True))
                for name in sorted(missing):
                    self.stderr.write(f"No experiment named {name!r}.")
                outcomes = [reconciler.reconcile(pk) for pk in ids]
            else:
                outcomes = run_reconcile_all()
            if not outcomes:
                self.stdout.write("Nothing to reconcile.")
            for outcome in outcomes:
                self.stdout.write(str(outcome))
            if not loop:
                return
            time.sleep(settings.SKYDECK_RECONCILE_INTERVAL)
