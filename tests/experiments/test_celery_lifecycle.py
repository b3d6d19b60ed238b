"""The lifecycle through a real Celery worker (with embedded beat) on real Redis."""

from pathlib import Path

import pytest

from experiments.models import Experiment
from tests.factories import ExperimentFactory
from tests.support import set_state, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.celery]


def test_running_experiment_succeeds_through_the_worker(celery_worker_process, owner):
    proc, log = celery_worker_process
    exp = ExperimentFactory(name="via-celery", command="echo from the worker", flags={"epochs": 2})
    # set_desired_state enqueues reconcile_experiment on commit; beat's poll sees the job finish.
    set_state(exp, "RUNNING", owner)
    wait_for(lambda: exp.jobs.exists(), timeout=30, message=f"a job; worker log:\n{log.read_text()[-2000:]}")
    wait_for(
        lambda: Experiment.objects.get(pk=exp.pk).phase == "SUCCEEDED",
        timeout=60,
        message=f"SUCCEEDED; worker log:\n{log.read_text()[-3000:]}",
    )
    job = exp.jobs.get()
    assert (job.status, job.exit_code) == ("SUCCEEDED", 0)
    assert Path(job.log_path).read_text() == "from the worker epochs=2\n"
    # The worker ran the reconcile enqueued on commit, and beat's polls.
    assert "Task experiments.tasks.reconcile_experiment[" in log.read_text()
    assert "Task experiments.tasks.poll[" in log.read_text()


def test_stop_through_the_worker_cancels(celery_worker_process):
    proc, log = celery_worker_process
    exp = ExperimentFactory(name="stop-me", command="sleep 300")
    set_state(exp, "RUNNING")
    wait_for(lambda: exp.jobs.filter(status="RUNNING").exists(), timeout=60, message="RUNNING")
    exp = Experiment.objects.get(pk=exp.pk)
    set_state(exp, "STOPPED")
    wait_for(lambda: exp.jobs.filter(status="CANCELLED").exists(), timeout=60, message="CANCELLED")
    wait_for(lambda: Experiment.objects.get(pk=exp.pk).phase == "STOPPED", timeout=30, message="phase STOPPED")
