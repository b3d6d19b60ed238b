"""End to end on the local Slurm cluster: real SkyPilot, a real Celery worker, real jobs.

Run with the cluster up (``make e2e-up``) and the SkyPilot client pointed at it:

    SKYDECK_E2E_SLURM=1 SKYDECK_TEST_SKY_HOME=<client home> SKYPILOT_API_SERVER_LOCAL_PORT=<port> \
        pytest -m slurm -s

Every change of desired state goes through the worker (the model enqueues a
reconcile on commit), and the test drives polls by enqueueing the poll task,
so the worker does all SkyPilot work. Measured times are printed, not asserted.
"""

import os
import time
import urllib.request

import pytest

from clusters.models import Cluster
from experiments.models import Experiment, Job
from tests.clusters.conftest import drive_until, poll_through_worker
from tests.conftest import require
from tests.factories import ExperimentFactory

pytestmark = [pytest.mark.slurm, pytest.mark.skypilot, pytest.mark.celery, pytest.mark.redis]

TIMEOUT = 300.0


@pytest.fixture
def slurm_worker(request, transactional_db):
    """A Celery worker whose SkyPilot client talks to the Slurm cluster's API server."""
    require(os.environ.get("SKYDECK_E2E_SLURM") == "1", "end-to-end Slurm tests run with SKYDECK_E2E_SLURM=1")
    home = os.environ.get("SKYDECK_TEST_SKY_HOME", "")
    require(bool(home) and os.path.exists(os.path.join(home, ".sky", "config.yaml")),
            "SKYDECK_TEST_SKY_HOME must be the Slurm cluster's SkyPilot client home (make e2e-up)")
    port = os.environ.get("SKYPILOT_API_SERVER_LOCAL_PORT", "46580")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as resp:
            healthy = resp.status == 200
    except OSError:
        healthy = False
    require(healthy, f"no SkyPilot API server on 127.0.0.1:{port} (make e2e-up)")
    os.environ.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    worker = request.getfixturevalue("celery_worker_process")
    yield worker
    _down_leftover_clusters()


def _down_leftover_clusters():
    """A test that failed half-way must not leave its Slurm allocation to the next run."""
    import sky

    from clusters.backends import get_backend

    backend = get_backend("skypilot")
    for name in sky_cluster_names():
        if name.startswith("sd-e2e-"):
            submission = backend.down(name)
            if submission is not None:
                sky.get(submission.request_id)


def slurm_experiment(name, command, **kwargs):
    return ExperimentFactory(name=name, command=command, backend="skypilot", infra="slurm", cpus="1", memory="1",
                             **kwargs)


def job_of(exp, attempt=1):
    return Job.objects.filter(experiment=exp, attempt=attempt).first()


def job_status(exp, attempt=1):
    job = job_of(exp, attempt)
    return job.status if job else None


def read_log(job):
    from clusters.backends import get_backend

    return get_backend("skypilot").read_log(job.cluster_name, job.sky_job_id, job.log_path, 0).text


def sky_cluster_names():
    from clusters.backends import get_backend

    return {c.name for c in get_backend("skypilot").list_clusters()}


def calls_of_one_poll():
    """The SDK calls (and seconds) of one poll, made here beside the worker's; for the report."""
    from clusters.backends import get_backend
    from experiments.observe import poll_all

    backend = get_backend("skypilot")
    backend.calls.clear()
    started = time.monotonic()
    poll_all(["skypilot"])
    return f"{dict(backend.calls)} in {time.monotonic() - started:.1f}s"


def terminate(exp):
    exp.refresh_from_db()
    exp.set_desired_state("TERMINATED")
    drive_until(
        lambda: Experiment.objects.get(pk=exp.pk).phase == "TERMINATED"
        and not Cluster.objects.filter(backend="skypilot", name=exp.cluster_name).exists(),
        timeout=TIMEOUT, message=f"{exp.name} terminated",
    )


def test_experiment_runs_to_success_and_terminating_keeps_history(slurm_worker):
    exp = slurm_experiment("e2e-ok", 'echo "hello from skydeck"; sleep 15; echo done', flags={"lr": 0.1})

    started = time.monotonic()
    exp.set_desired_state("RUNNING")
    drive_until(lambda: job_status(exp) in {"RUNNING", "SUCCEEDED", "FAILED", "FAILED_LAUNCH"},
                timeout=TIMEOUT, message="the job to run")
    to_running = time.monotonic() - started
    job = job_of(exp)
    assert job.status == "RUNNING", (job.status, job.error_message)
    assert job.sky_job_id is not None and job.cluster_name == "sd-e2e-ok"
    print(f"\nE2E-TIMING set RUNNING -> job RUNNING: {to_running:.1f}s")
    print(f"E2E-CALLS one poll with one owned UP cluster: {calls_of_one_poll()}")

    drive_until(lambda: job_status(exp) in {"SUCCEEDED", "FAILED", "LOST"}, timeout=TIMEOUT, message="the job to end")
    job.refresh_from_db()
    exp.refresh_from_db()
    assert job.status == "SUCCEEDED" and job.exit_code == 0
    assert job.cost == 0.0  # SkyPilot's cost report prices a Slurm allocation at zero
    assert exp.phase == "SUCCEEDED"
    print(f"E2E-TIMING set RUNNING -> job SUCCEEDED: {time.monotonic() - started:.1f}s")
    assert job.log_path
    log = read_log(job)
    assert "hello from skydeck" in log and "done lr=0.1" in log

    terminate(exp)
    assert "sd-e2e-ok" not in sky_cluster_names()
    # The history stays: the job, its status, its id and its output.
    job.refresh_from_db()
    assert exp.jobs.count() == 1 and job.status == "SUCCEEDED" and job.sky_job_id is not None
    assert "hello from skydeck" in read_log(job)
    kinds = set(exp.events.values_list("kind", flat=True))
    assert {"launch", "down", "job"} <= kinds


def test_long_job_set_stopped_ends_cancelled(slurm_worker):
    exp = slurm_experiment("e2e-long", "echo start; sleep 600")
    exp.set_desired_state("RUNNING")
    drive_until(lambda: job_status(exp) == "RUNNING" or job_status(exp) in {"FAILED_LAUNCH", "LOST"},
                timeout=TIMEOUT, message="the long job to run")
    job = job_of(exp)
    assert job.status == "RUNNING", job.error_message

    exp.refresh_from_db()
    exp.set_desired_state("STOPPED")
    drive_until(lambda: Experiment.objects.get(pk=exp.pk).phase == "STOPPED", timeout=TIMEOUT,
                message="the experiment to stop")
    job.refresh_from_db()
    exp.refresh_from_db()
    assert job.status == "CANCELLED"
    # SkyPilot agrees: the job is cancelled on the cluster.
    from clusters.backends import get_backend

    on_cluster = {j.job_id: j.status for j in get_backend("skypilot").list_jobs(exp.cluster_name)}
    assert on_cluster[job.sky_job_id] == "CANCELLED"
    # Slurm clusters cannot be stopped: a clear reason and the cluster left up, not a loop of retries.
    assert exp.status_reason == "StopNotSupported"
    assert "TERMINATED" in exp.status_message
    assert Cluster.objects.get(backend="skypilot", name=exp.cluster_name).status == "UP"
    stops = exp.events.filter(kind="stop").count()
    poll_through_worker()
    assert exp.events.filter(kind="stop").count() == stops

    terminate(exp)
    assert exp.jobs.get().status == "CANCELLED"


def test_failing_command_fails_and_follows_its_restart_policy(slurm_worker):
    exp = slurm_experiment("e2e-fail", "echo failing; exit 3", restart_policy="on_failure", max_restarts=1)
    exp.set_desired_state("RUNNING")
    drive_until(lambda: Experiment.objects.get(pk=exp.pk).phase == "FAILED", timeout=TIMEOUT,
                message="the experiment to give up")
    exp.refresh_from_db()
    jobs = list(exp.jobs.order_by("attempt"))
    # One run, one restart (max_restarts=1), then it gives up with the reason shown.
    assert [j.status for j in jobs] == ["FAILED", "FAILED"], [(j.status, j.error_message) for j in jobs]
    assert all(j.failure_kind == "user" and j.sky_job_id is not None for j in jobs)
    assert exp.status_reason == "RestartLimitReached"
    assert "failing" in read_log(jobs[-1])

    terminate(exp)
    assert exp.jobs.count() == 2
    # The first attempt's output was kept at teardown, though nobody had read it.
    assert "failing" in read_log(jobs[0])
