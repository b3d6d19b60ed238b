"""docker-compose.yml cannot run here (no Docker engine), so check it against the settings it feeds."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from tests.support import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ["web", "worker", "beat"]


def dockerfile_env():
    """The image's ENV, which every compose service starts with."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


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


def test_it_has_the_six_services_with_health_checks():
    assert set(SERVICES) == {"postgres", "redis", "web", "worker", "beat", "skypilot"}
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
        "postgres",
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert urlparse(env["CELERY_BROKER_URL"]).hostname == "redis"


def compose_settings(name, names, **extra):
    """Settings as the service sees them: the image's ENV, then the service's environment.

    Only the settings module is imported, so nothing is created: the paths can stay the container's.
    """
    env = {**dockerfile_env(), **service_env(name, {"SECRET_KEY": "compose-test-" + "k" * 40})}
    env.update(PATH="/usr/bin:/bin", HOME="/tmp", **extra)
    code = (
        "import json; from skydeck_site import settings as s;"
        f"print(json.dumps({{n: getattr(s, n) for n in {list(names)!r}}}, default=str))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_loads_the_settings_with_its_environment(name, tmp_path):
    env = service_env(name, {"SECRET_KEY": "compose-test-" + "k" * 40})
    env.update(PATH="/usr/bin:/bin", HOME="/tmp", SKYDECK_VAR_DIR=str(tmp_path / "var"))
    code = (
        "import os; os.environ['DJANGO_SETTINGS_MODULE']='skydeck_site.settings'; import django; django.setup();"
        "from django.conf import settings as s; print(s.DATABASES['default']['HOST'], s.CELERY_BROKER_URL, s.DEBUG,"
        " s.SESSION_COOKIE_SECURE, sorted(s.CELERY_BEAT_SCHEDULE))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:4] == ["postgres", "redis://redis:6379/0", "False", "False"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_keeps_connections_and_makes_only_the_var_folder(name):
    values = compose_settings(name, ["DATABASES", "SKYDECK_RUNTIME_DIRS", "VAR_DIR"])
    db = values["DATABASES"]["default"]
    assert (db["CONN_MAX_AGE"], db["CONN_HEALTH_CHECKS"]) == (60, True)
    # Redis is the broker: no broker folders, and the volume is the only folder made at start.
    assert values["SKYDECK_RUNTIME_DIRS"] == [values["VAR_DIR"]] == ["/app/var"]
    assert (
        compose_settings(name, ["DATABASES"], SKYDECK_DB_CONN_MAX_AGE="5")["DATABASES"]["default"]["CONN_MAX_AGE"] == 5
    )


def mounts(service):
    return [PurePosixPath(volume.split(":")[1]) for volume in SERVICES[service].get("volumes", [])]


def test_static_files_are_the_images_not_a_volumes():
    """A volume mounted over STATIC_ROOT would serve the first image's files after every upgrade."""
    static_root = PurePosixPath(compose_settings("web", ["STATIC_ROOT"])["STATIC_ROOT"])
    assert static_root == PurePosixPath("/app/staticfiles")
    for mount in mounts("web"):
        assert not static_root.is_relative_to(mount), mount


def test_the_environment_names_only_settings_that_exist():
    source = (ROOT / "skydeck_site" / "settings.py").read_text()
    for name in set(SERVICES["web"]["environment"]) | set(dockerfile_env()):
        if name.startswith(("SKYPILOT_", "PYTHON", "PIP_")):
            continue  # read by SkyPilot and Python themselves
        assert f'"{name}"' in source, name


def test_beat_keeps_its_schedule_where_the_settings_and_its_health_check_say():
    schedule = compose_settings("beat", ["CELERY_BEAT_SCHEDULE_FILENAME"])["CELERY_BEAT_SCHEDULE_FILENAME"]
    command = shlex.split(SERVICES["beat"]["command"])
    assert command[command.index("--schedule") + 1] == schedule
    assert PurePosixPath(schedule).parent in mounts("beat")
    assert f"ls {schedule}*" in SERVICES["beat"]["healthcheck"]["test"][1]


def test_commands_run_the_skydeck_app():
    assert "gunicorn skydeck_site.wsgi" in SERVICES["web"]["command"]
    assert "migrate" in SERVICES["web"]["command"]
    assert SERVICES["worker"]["command"].startswith("celery -A skydeck_site worker")
    assert SERVICES["beat"]["command"].startswith("celery -A skydeck_site beat")
    for name in ("worker", "beat"):
        assert SERVICES[name]["depends_on"]["web"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        assert "runall" not in SERVICES[name]["command"], name


def test_gunicorn_gets_dockers_stop_signal_and_ends_before_the_kill():
    """docker stop sends SIGTERM to the container's first process and SIGKILL 10 s later."""
    command = SERVICES["web"]["command"]
    # the shell that runs the migrations hands its process to gunicorn
    assert re.search(r"&&\s+exec gunicorn ", command), command
    graceful = int(re.search(r"--graceful-timeout (\d+)", command).group(1))
    assert graceful < int(SERVICES["web"].get("stop_grace_period", "10s").rstrip("s"))
    image = (ROOT / "Dockerfile").read_text()
    assert f'"--graceful-timeout", "{graceful}"' in image


def test_deploy_checks_pass_with_the_compose_settings_behind_tls(tmp_path):
    env = service_env("web", {"SECRET_KEY": "compose-" + "s3cr3t-Value-" * 5, "SKYDECK_HTTPS": "true"})
    env.update(
        PATH="/usr/bin:/bin",
        HOME="/tmp",
        SKYDECK_VAR_DIR=str(tmp_path / "var"),
        SECURE_HSTS_PRELOAD="true",
    )
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_worker_serves_the_queue_the_periodic_passes_are_routed_to():
    from django.conf import settings

    from tests.support import ROOT

    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed == {"periodic"}
    procfile = (ROOT / "Procfile").read_text()
    for command in (
        SERVICES["worker"]["command"],
        next(line for line in procfile.splitlines() if line.startswith("worker:")),
    ):
        assert "--queues=celery,periodic" in command


def test_the_skypilot_api_server_is_a_service_of_its_own_the_app_talks_to():
    server = SERVICES["skypilot"]
    assert server["command"].startswith("sky api start --foreground")
    for name in APP_SERVICES:
        assert service_env(name, {"SECRET_KEY": "x"})["SKYPILOT_API_SERVER_ENDPOINT"] == "http://skypilot:46580"
    assert "/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])
    assert service_env("web", {"SECRET_KEY": "x"})["SKYDECK_LOCAL_BACKEND"] == "off"
