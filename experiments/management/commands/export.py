"""manage.py export: the current experiments and sweeps as a SkyDeck file (skydeck.yaml)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from experiments import files
from experiments.models import Experiment


class Command(BaseCommand):
    help = (
        "Write experiments (and their whole sweeps) as a skydeck.yaml, to start versioning what you have; "
        "manage.py apply -f reads it back."
    )

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", help="Only these experiments (default: all).")
        parser.add_argument("--tag", help="Only experiments with this tag.")
        parser.add_argument("--sweep", help="Only the experiments of this sweep.")
        parser.add_argument("-o", "--output", help="Write to this file instead of standard output.")

    def handle(self, *args, names=(), tag=None, sweep=None, output=None, **options):
        experiments = Experiment.objects.select_related("sweep").order_by("name")
        if names:
            experiments = experiments.filter(name__in=names)
            missing = set(names) - set(experiments.values_list("name", flat=True))
            if missing:
                raise CommandError(f"No experiment named {', '.join(sorted(missing))}.")
        if tag:
            experiments = experiments.tagged(tag)
        if sweep:
            experiments = experiments.filter(sweep__name=sweep)
        text = files.export_file(list(experiments))
        if output:
            Path(output).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {output}.")
        else:
            self.stdout.write(text, ending="")
