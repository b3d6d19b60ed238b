"""Settings are parsed strictly: a bad value stops start-up with a clear message."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def load_settings(**env):
    code = "import django.conf as c; from skydeck_site import settings as s; print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.SKYDECK_POLL_INTERVAL, s.SKYDECK_RECONCILE_INTERVAL, s.DEBUG)"
    base = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT / "var" / "home-settings-test"), "SKYDECK_VAR_DIR": "/tmp/skydeck-settings-test"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)


def test_defaults_are_sqlite_filesystem_broker_and_seed_intervals():
    out = load_settings()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.sqlite3", "filesystem://localhost//", "30.0", "60.0", "False"]


def test_postgres_and_redis_urls():
    out = load_settings(DATABASE_URL="postgres://u:p@db:5432/skydeck", CELERY_BROKER_URL="redis://redis:6379/0",
                        SKYDECK_POLL_INTERVAL="5", SKYDECK_RECONCILE_INTERVAL="10", DEBUG="true")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.postgresql", "redis://redis:6379/0", "5.0", "10.0", "True"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres:///nohost"}, "has no host"),
        ({"CELERY_BROKER_URL": "amqp://guest@localhost//"}, "CELERY_BROKER_URL"),
        ({"SKYDECK_POLL_INTERVAL": "often"}, "SKYDECK_POLL_INTERVAL='often' is not a number"),
        ({"SKYDECK_RECONCILE_INTERVAL": "0"}, "must be at least 1.0"),
        ({"SKYDECK_BACKENDS": "local,aws"}, "unknown backend 'aws'"),
        ({"SKYDECK_PRODUCTION": "true"}, "SECRET_KEY must be set"),
    ],
)
def test_bad_values_raise_improperly_configured(env, message):
    out = load_settings(**env)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr
    assert message in out.stderr


def test_beat_schedule_uses_the_intervals_and_expires():
    from django.conf import settings

    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["poll"]["task"] == "experiments.tasks.poll"
    assert schedule["poll"]["schedule"] == settings.SKYDECK_POLL_INTERVAL
    assert schedule["poll"]["options"]["expires"] == settings.SKYDECK_POLL_INTERVAL
    assert schedule["reconcile-all"]["task"] == "experiments.tasks.reconcile_all"
    assert schedule["reconcile-all"]["schedule"] == settings.SKYDECK_RECONCILE_INTERVAL
    assert schedule["reconcile-all"]["options"]["expires"] == settings.SKYDECK_RECONCILE_INTERVAL


def test_importing_the_site_does_not_import_sky():
    code = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='skydeck_site.settings'; django.setup(); from django.core.management import call_command; call_command('check'); import skydeck_site.urls, experiments.views, experiments.tasks, clusters.poller, clusters.backends; import sys; print('sky' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "SKYDECK_VAR_DIR": "/tmp/skydeck-settings-test", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
