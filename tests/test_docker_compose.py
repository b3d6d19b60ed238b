"""docker-compose.yml cannot run here (no Docker engine), so check it against the settings it feeds."""

import re
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def resolve(value, env):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution."""

    def sub(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise ValueError(arg)
        return ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, str(value))


def service_env(name, env):
    return {k: resolve(v, env) for k, v in SERVICES[name]["environment"].items()}


def test_it_has_the_five_services_with_health_checks():
    assert set(SERVICES) == {"postgres", "redis", "web", "worker", "beat"}
    for name, service in SERVICES.items():
        assert "healthcheck" in service, name
    assert "postgres-data:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]


def test_a_secret_key_is_required():
    with pytest.raises(ValueError, match="SECRET_KEY"):
        service_env("web", {})


def test_urls_point_at_the_compose_services():
    env = service_env("web", {"SECRET_KEY": "x" * 50})
    db = urlparse(env["DATABASE_URL"])
    pg = SERVICES["postgres"]["environment"]
    assert (db.hostname, db.username, db.password, db.path.lstrip("/")) == (
        "postgres", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert urlparse(env["CELERY_BROKER_URL"]).hostname == "redis"


@pytest.mark.parametrize("name", ["web", "worker", "beat"])
def test_each_app_service_loads_the_settings_with_its_environment(name):
    env = service_env(name, {"SECRET_KEY": "compose-test-" + "k" * 40})
    env.update(PATH="/usr/bin:/bin", HOME="/tmp", SKYDECK_VAR_DIR=str(ROOT / "var" / "compose-test"))
    code = (
        "import os; os.environ['DJANGO_SETTINGS_MODULE']='skydeck_site.settings'; import django; django.setup();"
        "from django.conf import settings as s; print(s.DATABASES['default']['HOST'], s.CELERY_BROKER_URL, s.DEBUG,"
        " s.SESSION_COOKIE_SECURE, sorted(s.CELERY_BEAT_SCHEDULE))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["postgres", "redis://redis:6379/0", "False", "False"]


def test_commands_run_the_skydeck_app():
    assert "gunicorn skydeck_site.wsgi" in SERVICES["web"]["command"]
    assert "migrate" in SERVICES["web"]["command"]
    assert SERVICES["worker"]["command"].startswith("celery -A skydeck_site worker")
    assert SERVICES["beat"]["command"].startswith("celery -A skydeck_site beat")
    for name in ("worker", "beat"):
        assert SERVICES[name]["depends_on"]["web"]["condition"] == "service_healthy"


def test_deploy_checks_pass_with_the_compose_settings_behind_tls():
    env = service_env("web", {"SECRET_KEY": "compose-" + "s3cr3t-Value-" * 5, "SKYDECK_HTTPS": "true"})
    env.update(PATH="/usr/bin:/bin", HOME="/tmp", SKYDECK_VAR_DIR=str(ROOT / "var" / "compose-test"),
               SECURE_HSTS_PRELOAD="true")
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
