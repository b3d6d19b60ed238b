import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Make sure a login exists, and print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("SKYDECK_ADMIN_USER", "admin"))
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args, username, url, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        wanted = os.environ.get("SKYDECK_ADMIN_PASSWORD", "")
        user = User.objects.filter(username=username).first()
        if user is None:
            password = wanted or secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            if not wanted:
                password_file.parent.mkdir(parents=True, exist_ok=True)
                password_file.write_text(password + "\n")
                password_file.chmod(0o600)
            self.stdout.write(self.style.SUCCESS(f"Created the login {username!r}."))
        elif wanted and not user.check_password(wanted):
            user.set_password(wanted)
            user.save(update_fields=["password"])
        password = wanted
        if not password and password_file.exists():
            saved = password_file.read_text().strip()
            password = saved if user.check_password(saved) else ""
        shown = password or "(the password you set; change it with: manage.py changepassword " + username + ")"
        self.stdout.write(f"Log in at {url} as {username} / {shown}")
