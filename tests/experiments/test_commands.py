from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from tests.factories import ExperimentFactory
from tests.support import wait_for

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_reconcile_and_poll_print_what_they_did(local_root):
    exp = ExperimentFactory(name="cmd", command="echo hi", desired_state="RUNNING", run_number=1)
    out, _ = run("reconcile")
    assert "cmd: launch (Launching)" in out
    job = exp.jobs.get()

    def finished():
        out, _ = run("poll")
        return exp.jobs.get().status == "SUCCEEDED" and out

    out = wait_for(finished, message="job to finish")
    assert "local: 1 cluster, 1 job" in out
    assert job.name == "sd-cmd-1"
    out, _ = run("reconcile")
    assert "Nothing to reconcile." in out


def test_reconcile_names_and_unknown_names(local_root):
    ExperimentFactory(name="named")
    out, err = run("reconcile", "named", "nope")
    assert "named: nothing (Stopped)" in out
    assert "No experiment named 'nope'." in err


def test_poll_with_nothing_in_use():
    out, _ = run("poll")
    assert "No backend in use" in out


def test_ensure_login_creates_a_user_once_and_prints_how_to_log_in(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    out, _ = run("ensure_login")
    assert "Created the login 'admin'" in out
    password = (tmp_path / "admin-password.txt").read_text().strip()
    assert f"as admin / {password}" in out
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and user.check_password(password)
    out, _ = run("ensure_login")
    assert "Created" not in out and f"as admin / {password}" in out
    assert get_user_model().objects.count() == 1


def test_ensure_login_uses_a_given_password(monkeypatch, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("SKYDECK_ADMIN_PASSWORD", "a-chosen-password")
    out, _ = run("ensure_login")
    assert "as admin / a-chosen-password" in out
    assert not (tmp_path / "admin-password.txt").exists()


def test_only_one_poll_runs_at_a_time(local_root):
    from clusters.models import Heartbeat

    assert Heartbeat.try_lease("poll", 60, "elsewhere:1:a")
    out, _ = run("poll")
    assert "Another poll is running; skipped." in out
    Heartbeat.release("poll", "someone-else")  # only the holder can release
    out, _ = run("poll")
    assert "Another poll is running; skipped." in out
    Heartbeat.release("poll", "elsewhere:1:a")
    out, _ = run("poll")
    assert "No backend in use" in out
    assert Heartbeat.objects.get(name="poll").lease_until is None


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"SKYDECK_BACKENDS": "local"}, "The SkyPilot backend is off"),
        ({"SKYPILOT_API_SERVER_ENDPOINT": "http://skypilot.example.com:46580"}, "it is left alone"),
        ({"SKYPILOT_API_SERVER_LOCAL_PORT": "9"}, "would start a SkyPilot API server at http://127.0.0.1:9"),
    ],
)
def test_the_skypilot_server_service_starts_one_only_when_it_must(env, says, transactional_db):
    """What `make run`'s skypilot service does: nothing to run, a server left alone, or one it would start."""
    import subprocess
    import sys

    from tests.support import ROOT, subprocess_env

    out = subprocess.run(
        [sys.executable, "manage.py", "skypilot_server", "--once"],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert says in out.stdout
