"""examples/*.py against a real SkyDeck server (a subprocess on the test database)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments.models import ApiToken, Experiment, Job, Sweep
from tests.factories import UserFactory
from tests.support import ROOT, stop_process, subprocess_env, wait_for


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(transactional_db, local_root, tmp_path):
    port = free_port()
    with open(tmp_path / "server.log", "wb") as log:  # the child keeps its own copy of the file
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--nothreading"],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            pytest.fail(f"server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2)
            return True
        except OSError:
            return False

    wait_for(up, timeout=60, message="the server to answer")
    try:
        yield url
    finally:
        stop_process(proc)
        log.close()


def run_example(name, url, token, *args):
    env = {**os.environ, "SKYDECK_URL": url, "SKYDECK_TOKEN": token}
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], env=env, capture_output=True, text=True, timeout=120
    )


def drive(sweep, limit):
    """Poll and reconcile as the worker would, checking the limit at every step."""
    from experiments import reconciler
    from experiments.tasks import run_poll

    reconciler.reconcile_all()
    while sweep.experiments.filter(phase="SUCCEEDED").count() < sweep.experiments.count():
        assert Job.objects.active().filter(experiment__sweep=sweep).count() <= limit
        run_poll()
        reconciler.reconcile_all()
        assert not sweep.experiments.filter(phase="FAILED").exists(), list(
            sweep.experiments.values("name", "status_message")
        )
        time.sleep(0.2)


def test_grid_search_example_runs_a_2x4_grid_with_max_concurrent_3(server):
    token = ApiToken.issue(UserFactory(username="scripter"))[1]
    result = run_example("grid_search.py", server, token, "--name", "grid", "--max-concurrent", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 experiments, at most 3 at once" in result.stdout
    sweep = Sweep.objects.get(name="grid")
    assert sweep.experiments.count() == 8 and sweep.max_concurrent == 3
    combos = {(e.flags["nodes"], e.flags["layers"]) for e in sweep.experiments.all()}
    assert combos == {(n, layers) for n in (1, 2) for layers in (2, 4, 8, 16)}
    assert set(sweep.experiments.values_list("desired_state", flat=True)) == {"RUNNING"}
    drive(sweep, 3)
    assert Job.objects.filter(experiment__sweep=sweep, status="SUCCEEDED").count() == 8


def test_simple_experiment_example(server):
    token = ApiToken.issue(UserFactory(username="scripter"))[1]
    result = run_example("simple_experiment.py", server, token, "--name", "simple")
    assert result.returncode == 0, result.stdout + result.stderr
    experiment = Experiment.objects.get(name="simple")
    assert experiment.desired_state == "RUNNING" and experiment.flags["steps"] == 3
    # Run again: it exists, so the script only asks for it to run.
    again = run_example("simple_experiment.py", server, token, "--name", "simple")
    assert again.returncode == 0 and "already exists" in again.stdout


def test_examples_refuse_a_bad_token(server):
    result = run_example("grid_search.py", server, "sdk_wrong")
    assert result.returncode != 0 and "401" in result.stdout + result.stderr
