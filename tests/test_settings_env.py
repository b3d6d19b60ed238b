"""Settings are parsed strictly: a bad value stops start-up with a clear message."""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


def load_settings(**env):
    code = (
        "from skydeck_site import settings as s; print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL,"
        " s.SKYDECK_POLL_INTERVAL, s.SKYDECK_RECONCILE_INTERVAL, s.DEBUG)"
    )
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(ROOT / "var" / "home-settings-test"),
        "SKYDECK_VAR_DIR": "/tmp/skydeck-settings-test",
    }
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)


def test_defaults_are_sqlite_filesystem_broker_and_seed_intervals():
    out = load_settings()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.sqlite3", "filesystem://localhost//", "30.0", "60.0", "False"]


def test_postgres_and_redis_urls():
    out = load_settings(
        DATABASE_URL="postgres://u:p@db:5432/skydeck",
        CELERY_BROKER_URL="redis://redis:6379/0",
        SKYDECK_POLL_INTERVAL="5",
        SKYDECK_RECONCILE_INTERVAL="10",
        DEBUG="true",
    )
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
        ({"SKYDECK_DB_CONN_MAX_AGE": "forever"}, "SKYDECK_DB_CONN_MAX_AGE='forever' is not a whole number"),
        ({"SKYDECK_DB_CONN_MAX_AGE": "-1"}, "must be at least 0"),
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
    # beat offers a poll at the active interval; the task itself keeps to the idle one when nothing is in flight
    every = min(settings.SKYDECK_POLL_ACTIVE_INTERVAL, settings.SKYDECK_POLL_INTERVAL)
    assert schedule["poll"]["task"] == "experiments.tasks.poll"
    assert schedule["poll"]["schedule"] == every
    assert schedule["poll"]["options"]["expires"] == every
    assert schedule["reconcile-all"]["task"] == "experiments.tasks.reconcile_all"
    assert schedule["reconcile-all"]["schedule"] == settings.SKYDECK_RECONCILE_INTERVAL
    assert schedule["reconcile-all"]["options"]["expires"] == settings.SKYDECK_RECONCILE_INTERVAL


def test_importing_the_site_does_not_import_sky(tmp_path):
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='skydeck_site.settings'; django.setup();"
        "from django.core.management import call_command; call_command('check');"
        "import skydeck_site.urls, experiments.views, experiments.tasks, clusters.poller, clusters.backends;"
        "import sys; print('sky' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SKYDECK_VAR_DIR": str(tmp_path / "var"), "HOME": "/tmp"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def settings_values(names, var_dir, **env):
    """The named settings as JSON, read by a fresh interpreter that imports only the settings module."""
    code = (
        "import json; from skydeck_site import settings as s;"
        f"print(json.dumps({{n: getattr(s, n) for n in {list(names)!r}}}, default=str))"
    )
    base = {"PATH": "/usr/bin:/bin", "HOME": str(var_dir.parent), "SKYDECK_VAR_DIR": str(var_dir)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- No side effects at import; folders made at process start ---------------------


def test_importing_the_settings_creates_nothing(tmp_path):
    fresh = tmp_path / "fresh"
    values = settings_values(["VAR_DIR", "SKYDECK_RUNTIME_DIRS", "DATABASES"], fresh / "var")
    assert values["VAR_DIR"] == str(fresh / "var")
    # The folders are named (the SQLite file's and the broker's), not made.
    assert str(fresh / "var" / "broker" / "queue") in values["SKYDECK_RUNTIME_DIRS"]
    assert not fresh.exists()


def test_an_empty_var_dir_means_the_default_not_the_current_folder(tmp_path):
    values = settings_values(
        ["VAR_DIR", "SKYDECK_LOCAL_ROOT"], tmp_path / "var", SKYDECK_VAR_DIR=" ", SKYDECK_LOCAL_ROOT=""
    )
    assert values == {"VAR_DIR": str(ROOT / "var"), "SKYDECK_LOCAL_ROOT": str(ROOT / "var" / "local-clusters")}


def test_importing_the_settings_names_no_broker_folder_for_redis(tmp_path):
    values = settings_values(
        ["SKYDECK_RUNTIME_DIRS"],
        tmp_path / "var",
        DATABASE_URL="postgres://u:p@db:5432/skydeck",
        CELERY_BROKER_URL="redis://redis:6379/0",
    )
    assert values["SKYDECK_RUNTIME_DIRS"] == [str(tmp_path / "var")]


def test_migrate_and_check_work_with_a_var_dir_that_does_not_exist_yet(tmp_path):
    var = tmp_path / "not" / "yet" / "var"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SKYDECK_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "skydeck_site.settings",
    }
    for args in (["check"], ["migrate", "--noinput", "-v0"]):
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    assert (var / "skydeck.sqlite3").is_file()
    for sub in ("queue", "processed", "control"):
        assert (var / "broker" / sub).is_dir()


def test_a_sqlite_file_outside_the_var_dir_gets_its_folder_at_start(tmp_path):
    db = tmp_path / "elsewhere" / "db.sqlite3"
    code = "import django; django.setup(); from django.db import connection; connection.ensure_connection()"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SKYDECK_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{db}",
        "DJANGO_SETTINGS_MODULE": "skydeck_site.settings",
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert db.is_file()


# --- Database connections -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "max_age"),
    [
        ({}, 0),
        ({"DATABASE_URL": "postgres://u:p@db:5432/skydeck"}, 60),
        ({"DATABASE_URL": "postgres://u:p@db:5432/skydeck", "SKYDECK_DB_CONN_MAX_AGE": "300"}, 300),
        ({"DATABASE_URL": "postgres://u:p@db:5432/skydeck", "SKYDECK_DB_CONN_MAX_AGE": "0"}, 0),
        ({"SKYDECK_DB_CONN_MAX_AGE": "5"}, 5),
    ],
)
def test_connection_age_defaults_by_engine_and_comes_from_the_environment(tmp_path, env, max_age):
    db = settings_values(["DATABASES"], tmp_path / "var", **env)["DATABASES"]["default"]
    assert db["CONN_MAX_AGE"] == max_age
    assert db["CONN_HEALTH_CHECKS"] is True


# --- Celery time limits -----------------------------------------------------------

LIMITS = ["CELERY_TASK_SOFT_TIME_LIMIT", "CELERY_TASK_TIME_LIMIT", "CELERY_TASK_ANNOTATIONS"]
LIMITS += ["SKYDECK_POLL_TIME_LIMIT", "SKYDECK_POLL_LEASE_SECONDS", "SKYDECK_POLL_TIMEOUT"]
TASKS = ["experiments.tasks.poll", "experiments.tasks.reconcile_all", "experiments.tasks.reconcile_experiment"]


def check_limits(values):
    """Every limit is a pair with the soft one first; a poll gives up on answers before it is stopped."""
    assert 0 < values["CELERY_TASK_SOFT_TIME_LIMIT"] < values["CELERY_TASK_TIME_LIMIT"]
    annotations = values["CELERY_TASK_ANNOTATIONS"]
    for name in TASKS:
        assert 0 < annotations[name]["soft_time_limit"] < annotations[name]["time_limit"], name
    poll = annotations["experiments.tasks.poll"]
    assert poll["time_limit"] == values["SKYDECK_POLL_TIME_LIMIT"]
    assert values["SKYDECK_POLL_TIMEOUT"] < poll["soft_time_limit"]
    return annotations


def test_time_limit_defaults(tmp_path):
    values = settings_values(LIMITS, tmp_path / "var")
    annotations = check_limits(values)
    assert (values["SKYDECK_POLL_TIME_LIMIT"], values["SKYDECK_POLL_LEASE_SECONDS"]) == (110, 15)
    assert annotations["experiments.tasks.poll"] == {"soft_time_limit": 100, "time_limit": 110}


def test_the_poll_limit_and_lease_come_from_the_environment(tmp_path):
    values = settings_values(LIMITS, tmp_path / "var", SKYDECK_POLL_TIME_LIMIT="50", SKYDECK_POLL_TIMEOUT="20")
    annotations = check_limits(values)
    assert annotations["experiments.tasks.poll"] == {"soft_time_limit": 40, "time_limit": 50}
    values = settings_values(LIMITS, tmp_path / "var", SKYDECK_POLL_LEASE_SECONDS="30")
    check_limits(values)
    assert values["SKYDECK_POLL_LEASE_SECONDS"] == 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKYDECK_POLL_TIME_LIMIT": "70"}, "must be more than SKYDECK_POLL_TIMEOUT + 10"),
        ({"SKYDECK_POLL_LEASE_SECONDS": "2"}, "must be at least 3.0"),
        ({"SKYDECK_POLL_TIME_LIMIT": "5"}, "must be at least 15.0"),
        ({"SKYDECK_POLL_TIME_LIMIT": "soon"}, "is not a number"),
    ],
)
def test_bad_limits_raise_improperly_configured(env, message):
    out = load_settings(**env)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr
    assert message in out.stderr


def test_every_beat_entry_expires():
    from django.conf import settings

    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert 0 < entry["options"]["expires"] <= entry["schedule"], name


def test_the_tasks_carry_their_limits():
    from django.conf import settings

    import experiments.tasks  # noqa: F401 - registers the tasks
    from skydeck_site.celery import app

    assert app.conf.task_time_limit == settings.CELERY_TASK_TIME_LIMIT
    assert app.conf.task_soft_time_limit == settings.CELERY_TASK_SOFT_TIME_LIMIT
    for name, limits in settings.CELERY_TASK_ANNOTATIONS.items():
        task = app.tasks[name]
        assert (task.soft_time_limit, task.time_limit) == (limits["soft_time_limit"], limits["time_limit"]), name


def test_a_poll_takes_the_lease_the_settings_name(db, settings, monkeypatch):
    """A spy on Heartbeat.try_lease records the length asked for and calls the real one:
    the lease itself is gone once the poll releases it, so it cannot be read afterwards."""
    from clusters.models import Heartbeat
    from experiments.tasks import run_poll

    asked = []
    real = Heartbeat.try_lease.__func__

    def spy(cls, name, seconds, *holder):
        asked.append((name, seconds))
        return real(cls, name, seconds, *holder)

    monkeypatch.setattr(Heartbeat, "try_lease", classmethod(spy))
    settings.SKYDECK_POLL_LEASE_SECONDS = 1234.0
    run_poll()
    assert asked == [("poll", 1234.0)]
