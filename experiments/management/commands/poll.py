import time

from django.conf import settings
from django.core.management.base import BaseCommand

from experiments.tasks import PollInProgress, run_poll


class Command(BaseCommand):
    help = "Poll the backends once: update clusters and jobs, then reconcile what changed."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Repeat every SKYDECK_POLL_INTERVAL seconds.")

    def handle(self, *args, loop=False, **options):
        while True:
            try:
                polls, outcomes = run_poll()
            except PollInProgress:
                self.stdout.write("Another poll is running; skipped.")
            else:
                if not polls:
                    self.stdout.write("No backend in use: nothing to poll.")
                for p in polls:
                    self.stdout.write(p.summary())
                for outcome in outcomes:
                    self.stdout.write(f"  reconciled {outcome}")
            if not loop:
                return
            time.sleep(settings.SKYDECK_POLL_INTERVAL)
