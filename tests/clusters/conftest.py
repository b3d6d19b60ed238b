"""Fixtures for the SkyPilot backend tests: real API servers, and polls driven through Celery."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item, so a fixture can tell after ``yield`` whether its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sky_cli():
    return str(Path(sys.executable).parent / "sky")


@pytest.fixture(scope="session")
def nocloud_api_server(tmp_path_factory):
    """A real SkyPilot API server with no cloud enabled: its own HOME and port.

    Started once per session (about 8 s) and stopped at the end; it never
    touches another SkyPilot setup on the machine.
    """
    home = tmp_path_factory.mktemp("sky-nocloud-home")
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SKYPILOT_API_SERVER") and k != "SKYPILOT_DISABLE_LOCAL_API_SERVER"
    }
    env.update(HOME=str(home), SKYPILOT_API_SERVER_LOCAL_PORT=str(port), SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    try:
        started = subprocess.run([_sky_cli(), "api", "start"], env=env, capture_output=True, text=True, timeout=180)
        ok, detail = started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        ok, detail = False, str(exc)
    require(ok, f"could not start a local SkyPilot API server: {detail}")
    try:
        yield {"HOME": str(home), "SKYPILOT_API_SERVER_ENDPOINT": f"http://127.0.0.1:{port}"}
    finally:
        subprocess.run([_sky_cli(), "api", "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def skypilot_backend():
    """The process's SkyPilot backend, fresh, with its call counter at zero."""
    from clusters.backends import get_backend

    get_backend.cache_clear()
    backend = get_backend("skypilot")
    yield backend
    get_backend.cache_clear()


def _forget_sky_endpoint():
    """The SDK caches its server URL for the life of the process; tests switch servers."""
    from sky.server import common as server_common

    server_common.get_server_url.cache_clear()
    server_common.is_api_server_local.cache_clear()


@pytest.fixture
def sky_endpoint(monkeypatch, skypilot_backend):
    """Point this process's SkyPilot client at a given API server for one test."""

    def point(url):
        monkeypatch.setenv("SKYPILOT_API_SERVER_ENDPOINT", url)
        _forget_sky_endpoint()
        return skypilot_backend

    yield point
    _forget_sky_endpoint()


@pytest.fixture
def use_nocloud_server(nocloud_api_server, sky_endpoint):
    """This process's SkyPilot client, talking to the no-cloud server."""
    return sky_endpoint(nocloud_api_server["SKYPILOT_API_SERVER_ENDPOINT"])
