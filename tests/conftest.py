"""Shared fixtures: a small cast of users, service checks, and a real Celery worker."""

import os
import subprocess
import sys

import pytest
from django.db import connection

from tests.factories import UserFactory
from tests.support import ROOT, kill_leftover_jobs, require, stop_process, subprocess_env, use_broker, wait_for


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
    kill_leftover_jobs(root)


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


@pytest.fixture
def celery_worker_process(request, transactional_db, redis_url, local_root, tmp_path):
    """A real Celery worker on real Redis, sharing the test database.

    Its keys carry a prefix of their own: the Redis may be shared, and nothing the
    suite did not create is ever flushed; its own keys are deleted at the end.
    """
    import uuid

    import redis

    prefix = f"skydeck-test-{uuid.uuid4().hex[:12]}:"
    log = tmp_path / "worker.log"
    # Embedded beat with short intervals, so the periodic passes really run.
    variables = {
        "CELERY_BROKER_URL": redis_url,
        "SKYDECK_BROKER_KEY_PREFIX": prefix,
        "SKYDECK_POLL_INTERVAL": 1,
        "SKYDECK_POLL_ACTIVE_INTERVAL": 1,
        "SKYDECK_RECONCILE_INTERVAL": 2,
        "SKYDECK_LOG_SYNC_INTERVAL": 2,
    }
    # A test (or its module) may set more or other values: @pytest.mark.worker_env(NAME="value");
    # the closest marker wins.
    for marker in reversed(list(request.node.iter_markers("worker_env"))):
        variables.update(marker.kwargs)
    env = subprocess_env(**variables)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "skydeck_site",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "--pool=prefork",
                "--queues=celery,periodic",
                f"--hostname=test-{os.getpid()}@%h",
                "--without-mingle",
                "--without-gossip",
                "--beat",
                f"--schedule={tmp_path / 'beat-schedule'}",
            ],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"celery worker exited: {log.read_text()[-3000:]}")
        return b"ready." in log.read_bytes()

    try:
        wait_for(ready, timeout=60, message="the celery worker to start")
    except AssertionError:
        proc.kill()
        pytest.fail(f"celery worker did not start: {log.read_text()[-3000:]}")
    try:
        # The test process enqueues on the same broker, under the same prefix.
        with use_broker(redis_url, key_prefix=prefix):
            yield proc, log
    finally:
        stop_process(proc)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def enqueued(settings):
    """The tasks sent to the broker (the filesystem broker of the test settings), read back from its folder."""
    from pathlib import Path

    from tests.support import broker_messages

    folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
    before = {p.name for p in Path(folder).glob("*.msg")}
    return lambda: broker_messages(folder, skip=before)


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (``--dist loadgroup``), tests that share one outside service run in one worker, in turn.

    The Slurm end-to-end tests share the one-node cluster (and their cluster names); the
    other SkyPilot tests share one no-cloud API server per worker, so one worker starts it.
    """
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif item.get_closest_marker("skypilot"):
            item.add_marker(pytest.mark.xdist_group("skypilot"))
