"""manage.py apply -f skydeck.yaml: print the plan, then make the file true (unless --dry-run)."""

import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from experiments import files, intent


class Command(BaseCommand):
    help = (
        "Apply a SkyDeck file (skydeck.yaml): compute the plan (create, update, desired state, delete with "
        "--prune, unchanged), print it, and carry it out unless --dry-run. Applying it twice changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("-f", "--file", required=True, help="The skydeck.yaml to apply; - reads standard input.")
        parser.add_argument("--dry-run", action="store_true", help="Print the plan and change nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Also delete experiments the file does not name (never one with an active job).",
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="Restart an experiment whose spec changes while a job runs (otherwise that job keeps the old spec).",
        )
        parser.add_argument(
            "--user",
            help="Act as this user: what they may not change is refused, what is created is theirs "
            "(default: the operator, who may change everything).",
        )
        parser.add_argument(
            "--no-check",
            action="store_true",
            help="Do not ask the backends (SkyPilot's own loader) to check what would be launched.",
        )

    def handle(self, *args, file, dry_run=False, prune=False, restart=False, user=None, no_check=False, **options):
        if file == "-":
            text, source, base_dir = sys.stdin.buffer.read(), "skydeck.yaml", Path.cwd()
        else:
            path = Path(file)
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise CommandError(f"Cannot read {file}: {exc.strerror or exc}.") from None
            source, base_dir = file, path.resolve().parent
        actor = self._actor(user)
        try:
            wanted = files.read_file(text, source=source, base_dir=base_dir)
            plan = files.plan(wanted, actor, prune=prune)
            if not no_check:
                files.check_launchable(plan)
        except files.FileInvalid as exc:
            raise CommandError(f"{source} cannot be applied; nothing changed:\n" + str(exc)) from None
        self.stdout.write(f"Plan for {source}{' (dry run)' if dry_run else ''}:")
        for line in files.format_plan(plan):
            self.stdout.write(line)
        if plan.refused and dry_run:
            raise CommandError(f"{len(plan.refused)} refused (marked ! above): applying it would change nothing.")
        if plan.refused:
            raise CommandError(f"Nothing applied: {len(plan.refused)} refused (marked ! above).")
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
            return
        if not plan.changes:
            self.stdout.write("Nothing to change.")
            return
        try:
            done = files.apply(plan, actor, restart=restart)
        except (files.Refused, files.ApplyFailed) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Applied {len(done)} change{'s' if len(done) != 1 else ''}."))

    def _actor(self, username):
        if not username:
            return intent.Actor.system("file")
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}.")
        return intent.Actor(user, "file")
