"""The Procfile that `make run` hands to honcho, and one Ctrl-C stopping everything it started."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from honcho.environ import parse_procfile

from tests.support import ROOT

PROCESSES = parse_procfile((ROOT / "Procfile").read_text()).processes
MAKEFILE = (ROOT / "Makefile").read_text()


def option(command, name):
    match = re.search(rf"{name}[ =](\S+)", command)
    return match and match.group(1).strip("\"'")


def test_the_procfile_names_web_worker_beat_and_the_skypilot_server():
    assert {"web", "worker", "beat", "skypilot"} <= set(PROCESSES)
    assert "manage.py skypilot_server" in PROCESSES["skypilot"]
    web, worker, beat = PROCESSES["web"], PROCESSES["worker"], PROCESSES["beat"]
    assert "gunicorn skydeck_site.wsgi" in web
    assert option(web, "--bind") == "${SKYDECK_BIND:-127.0.0.1:8000}"
    assert "celery -A skydeck_site worker" in worker
    assert option(worker, "--concurrency") == "${SKYDECK_WORKER_CONCURRENCY:-2}"
    assert "celery -A skydeck_site beat" in beat
    # exec: the process honcho signals is the server itself, not a shell waiting on it
    assert all(command.startswith("exec ") for command in PROCESSES.values())


def test_gunicorn_stops_inside_the_wait_honcho_gives_it():
    """honcho SIGKILLs what still runs after its wait; gunicorn's graceful stop must end first,
    or it logs "Worker was sent SIGKILL! Perhaps out of memory?" on every Ctrl-C."""
    wait = int(re.search(r"honcho\.manager\.KILL_WAIT = (\d+)", MAKEFILE).group(1))
    assert int(option(PROCESSES["web"], "--graceful-timeout")) < wait
    assert "$(HONCHO) start" in MAKEFILE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid):
    """Every process below pid, found through the parent links in /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.celery
def test_make_run_starts_everything_and_one_ctrl_c_stops_it_all(tmp_path):
    """`make run` on a fresh var folder and a free port, then SIGINT to its process group,
    as a terminal's Ctrl-C sends it. Embedded defaults only: SQLite and the filesystem broker."""
    port = free_port()
    venv = Path(sys.executable).parent.parent
    drop = ("SKYDECK_", "CELERY_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(SKYDECK_VAR_DIR=str(tmp_path / "fresh" / "var"), SKYDECK_BIND=f"127.0.0.1:{port}")
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # -o install: the suite runs inside an installed environment; do not reinstall it.
        make = subprocess.Popen(
            ["make", "-o", "install", "run", f"PY={sys.executable}", f"VENV={venv}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = set()
    try:
        deadline = time.monotonic() + 120
        while True:
            assert make.poll() is None, f"make run exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not up in time: {log.read_text()[-3000:]}"
            text = log.read_text(errors="replace")
            if "ready." in text and "beat: Starting" in text:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=5) as page:
                        if page.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.5)
        started = descendants(make.pid)
        commands = " | ".join(cmdline(pid) for pid in started)
        for name in ("honcho", "gunicorn", "celeryd", "celery beat"):
            assert name in commands, commands

        os.killpg(make.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while (make.poll() is None or any(alive(pid) for pid in started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [f"{pid}: {cmdline(pid)}" for pid in started if alive(pid)]
        assert make.poll() is not None and not left, f"still running 30 s after Ctrl-C: {left}"
        text = log.read_text(errors="replace")
        assert "SIGINT received" in text
        for stopped in ("web.1 stopped (rc=0)", "worker.1 stopped (rc=0)", "beat.1 stopped (rc=0)"):
            assert stopped in text, text[-3000:]
        # Nothing had to be killed: not by honcho, not by gunicorn's master; no pool process died mid-task.
        assert "SIGKILL" not in text, text[-3000:]
        assert "exited with 'signal" not in text, text[-3000:]
    finally:
        for pid in [make.pid, *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        make.wait(timeout=10)
