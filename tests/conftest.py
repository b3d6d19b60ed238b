"""Shared fixtures: a small cast of users, service checks, and a real Celery worker."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition, reason):
    """Skip with a stated reason on a bare machine; fail under CI, where every service must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


@pytest.fixture
def owner(db):
    return UserFactory(username="owner")


@pytest.fixture
def other_user(db):
    return UserFactory(username="other")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def local_root(tmp_path, settings):
    """A private directory for the local backend's clusters."""
    root = tmp_path / "local-clusters"
    settings.SKYDECK_LOCAL_ROOT = root
    from clusters.backends import get_backend

    get_backend.cache_clear()
    yield root
    get_backend.cache_clear()
    _kill_leftover_jobs(root)


def _kill_leftover_jobs(root):
    import json
    import signal

    for meta in root.glob("*/jobs/*/meta.json"):
        try:
            os.killpg(json.loads(meta.read_text())["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError, KeyError, ValueError, OSError):
            pass


@pytest.fixture
def postgres_db():
    require(connection.vendor == "postgresql", "needs PostgreSQL: set DATABASE_URL=postgres://...")


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("SKYDECK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no Redis here"
        require(False, f"needs Redis at {url}: {exc}")
    return url


def database_url_for_subprocess():
    """The test database as a URL a subprocess (worker, server) can open."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def subprocess_env(**extra):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="skydeck_site.settings",
        DATABASE_URL=database_url_for_subprocess(),
        SKYDECK_VAR_DIR=str(settings.VAR_DIR),
        SKYDECK_LOCAL_ROOT=str(settings.SKYDECK_LOCAL_ROOT),
        SKYDECK_BACKOFF_BASE=str(settings.SKYDECK_BACKOFF_BASE),
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def celery_worker_process(transactional_db, redis_url, local_root, tmp_path):
    """A real Celery worker on real Redis, sharing the test database."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    log = tmp_path / "worker.log"
    # Embedded beat with short intervals, so the periodic passes really run.
    env = subprocess_env(CELERY_BROKER_URL=redis_url, SKYDECK_POLL_INTERVAL=1, SKYDECK_RECONCILE_INTERVAL=2)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "skydeck_site", "worker", "--loglevel=INFO",
             "--concurrency=2", "--pool=prefork", f"--hostname=test-{os.getpid()}@%h", "--without-mingle",
             "--without-gossip", "--beat", f"--schedule={tmp_path / 'beat-schedule'}"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and b"ready." not in log.read_bytes():
        if proc.poll() is not None:
            pytest.fail(f"celery worker exited: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    else:
        if b"ready." not in log.read_bytes():
            proc.kill()
            pytest.fail(f"celery worker did not start: {log.read_text()[-3000:]}")
    try:
        # The test process enqueues on the same broker.
        with use_broker(redis_url):
            yield proc, log
    finally:
        stop_process(proc)


def stop_process(proc, timeout=20):
    """Ask a subprocess to end; kill it if it will not."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def use_broker(url):
    """Point this process's Celery app at another broker, dropping cached connections.

    Celery reads CELERY_BROKER_URL from the environment before its own
    configuration, so the environment is what is switched.
    """
    from kombu import pools

    from skydeck_site.celery import app

    def reset():
        if app._pool is not None:
            app._pool.force_close_all()
            app._pool = None
        # kombu keeps producer pools in a registry of its own; drop them too, or the
        # next enqueue uses a pool closed above ("Acquire on closed pool").
        pools.reset()
        app.amqp._producer_pool = None

    old = os.environ.get("CELERY_BROKER_URL")
    os.environ["CELERY_BROKER_URL"] = url
    reset()
    try:
        assert app.conf.broker_url == url
        yield app
    finally:
        if old is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = old
        reset()


def wait_for(predicate, timeout=30.0, interval=0.2, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
