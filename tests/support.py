"""Helpers the tests share: service checks, waiting, subprocesses, the broker, a flag-schema model.

Not a test module and not a conftest: tests import from here, never from each other.
"""

import contextlib
import enum
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Literal

import pytest
from django.conf import settings
from django.db import connection
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition, reason):
    """Skip with a stated reason on a bare machine; fail under CI, where every service must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI requires it: {reason}")
    pytest.skip(reason)


def wait_for(predicate, timeout=30.0, interval=0.2, message="condition", between=None):
    """Return ``predicate()``'s first true value, calling ``between()`` (a poll, say) between looks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        if between is not None:
            between()
            value = predicate()
            if value:
                return value
        time.sleep(interval)


# --- subprocesses ----------------------------------------------------------------------


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


def stop_process(proc, timeout=20):
    """Ask a subprocess to end; kill it if it will not."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def kill_leftover_jobs(root):
    """Kill every local job a test left running under ``root``."""
    for meta in Path(root).glob("*/jobs/*/meta.json"):
        with contextlib.suppress(ProcessLookupError, PermissionError, KeyError, ValueError, OSError):
            os.killpg(json.loads(meta.read_text())["pgid"], signal.SIGKILL)


@contextlib.contextmanager
def use_broker(url, key_prefix=""):
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
    old_options = app.conf.broker_transport_options
    os.environ["CELERY_BROKER_URL"] = url
    # The app reads its settings under the CELERY namespace.
    app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": key_prefix} if key_prefix else {}
    reset()
    try:
        assert app.conf.broker_url == url
        yield app
    finally:
        if old is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = old
        app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = old_options
        reset()


# --- the control loop through a real worker ------------------------------------------------


def poll_through_worker(timeout=60.0):
    """Enqueue one poll on the Celery worker and wait until it has run."""
    from clusters.models import Heartbeat
    from experiments.tasks import poll

    def finished():
        return Heartbeat.objects.filter(name="poll").values_list("finished_at", flat=True).first()

    before = finished()
    poll.delay()
    return wait_for(lambda: (after := finished()) and after != before and after, timeout, 0.3, "a poll to finish")


def drive_until(predicate, *, timeout, message, pause=1.0):
    """Poll through the worker until ``predicate()`` holds; return its value."""
    # A poll may take its whole deadline and then rest (the worker paces itself): wait for the next one that long.
    return wait_for(predicate, timeout, pause, message, between=lambda: poll_through_worker(timeout=300.0))


# --- the browser ----------------------------------------------------------------------------


def log_in(page, username="owner", password="correct horse battery"):
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/")


# --- a model to import flag schemas from --------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Optimizer(BaseModel):
    lr: float = Field(0.001, description="learning rate")
    kind: Literal["adam", "sgd"] = "adam"
    momentum: float | None = None


class Trainer(BaseModel):
    optimizer: Optimizer = Optimizer()
    epochs: int
    amp: bool = True
    color: Color = Color.BLUE
    level: Level = Level.LOW
    tag: str | None = None


class Config(BaseModel):
    trainer: Trainer
    name: Annotated[str, Field(description="run name")] = "run"
    shape: list[int] = [1, 2]
    mixed: int | str = 3
    maybe_model: Optimizer | None = None


# --- intent, as the dashboard's user --------------------------------------------------------


def actor(user=None):
    """A user of the dashboard, or (no user) the operator at the command line."""
    from experiments import intent

    return intent.Actor(user, "user") if user is not None else intent.Actor.system("cli")


def set_state(experiment, state, user=None):
    """Set the desired state as a user of the dashboard would (through ``intent``)."""
    from experiments import intent

    return intent.set_desired_state(actor(user), experiment, state)


def restart(experiment, user=None):
    from experiments import intent

    return intent.restart(actor(user), experiment)


def broker_messages(folder, skip=()):
    """(task name, args) of each message waiting in a filesystem broker's folder, oldest first."""
    import ast
    import base64

    found = []
    for path in sorted(Path(folder).glob("*.msg")):
        if path.name in skip:
            continue
        message = json.loads(path.read_text())
        headers = message.get("headers", {})
        body = json.loads(base64.b64decode(message["body"])) if message.get("body") else [[]]
        args = body[0] if isinstance(body, list) and body else ast.literal_eval(headers.get("argsrepr", "()"))
        found.append((headers.get("task"), tuple(args)))
    return found


# --- form posts and a webhook receiver ---------------------------------------------------


def form_data(**overrides):
    data = {
        "name": "new-exp",
        "description": "",
        "command": "python train.py",
        "flag_style": "plain",
        "backend": "local",
        "accelerators": "",
        "num_nodes": "1",
        "cpus": "",
        "memory": "",
        "infra": "",
        "disk_size": "",
        "image_id": "",
        "autostop_minutes": "",
        "workdir": "",
        "setup": "",
        "envs": "",
        "restart_policy": "never",
        "max_restarts": "3",
        "tags": "a, b",
        "desired_state": "STOPPED",
        "flag-r1-key": "trainer.lr",
        "flag-r1-type": "float",
        "flag-r1-value": "0.001",
        "flag-r2-key": "trainer.amp",
        "flag-r2-type": "boolean",
        "flag-r2-value": "true",
        "flag-r3-key": "trainer.epochs",
        "flag-r3-type": "integer",
        "flag-r3-value": "10",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


class Receiver:
    """A webhook endpoint: answers each POST with the next status of ``statuses`` (then 200), and keeps the bodies."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests = []  # (status answered, parsed body)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server protocol
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append((status, json.loads(body or b"{}")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self):
        with self.lock:
            return [body for status, body in self.requests if status == 200]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
