import os
import sys

from django.core.management.base import BaseCommand, CommandError

from experiments.flags import import_model, learn_from_experiments, load_model


class Command(BaseCommand):
    help = (
        "Import flag schemas from a pydantic model in your own code (module.path:ModelClass), "
        "replacing the namespace's old ones. Nested models become dotted paths."
    )

    def add_arguments(self, parser):
        parser.add_argument("model", nargs="?", help="module.path:ModelClass, importable from PYTHONPATH")
        parser.add_argument("--namespace", help="Where the flags are stored (default: the class name)")
        parser.add_argument("--learn", action="store_true", help="Also learn the flags used by existing experiments")

    def handle(self, *args, model, namespace, learn, **options):
        if not model and not learn:
            raise CommandError("Give a model (module.path:ModelClass), or --learn.")
        if model:
            # The user's package is usually beside where they run the command.
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            try:
                cls = load_model(model)
            except ImportError as exc:
                raise CommandError(f"Cannot import {model}: {exc}. Is its package on PYTHONPATH?") from None
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            namespace = namespace or cls.__name__
            rows = import_model(cls, namespace)
            self.stdout.write(
                self.style.SUCCESS(f"Imported {len(rows)} flags from {model} into namespace {namespace!r}.")
            )
            for row in rows:
                extra = f" choices={row.choices}" if row.choices else ""
                required = " required" if row.required else ""
                self.stdout.write(
                    f"  {row.path}: {row.type} ({row.type_name}) default={row.default!r}{extra}{required}"
                )
        if learn:
            learn_from_experiments()
            self.stdout.write(self.style.SUCCESS("Learnt the flags used by existing experiments."))
