"""The whole declarative loop on the local backend, driven in-process: real processes, real database."""

from pathlib import Path

import pytest

from clusters.models import Cluster
from experiments import intent
from experiments.models import Event, Experiment, Job
from experiments.tasks import run_poll, run_reconcile_all
from tests.factories import ExperimentFactory
from tests.support import restart, set_state, wait_for

pytestmark = pytest.mark.django_db


def drive_until(predicate, timeout=30, message="state"):
    """Run poll and reconcile passes, as beat would, until the predicate holds."""

    def step():
        run_poll()
        run_reconcile_all()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.2, message=message)


def fresh(exp):
    return Experiment.objects.get(pk=exp.pk)


def test_running_experiment_runs_and_succeeds(local_root, owner):
    exp = ExperimentFactory(name="hello", command="echo hello", flags={"lr": 0.1, "name": "a b"})
    set_state(exp, "RUNNING", owner)
    drive_until(lambda: fresh(exp).phase == "SUCCEEDED", message="SUCCEEDED")
    [job] = exp.jobs.all()
    assert (job.status, job.exit_code, job.attempt, job.failure_kind) == ("SUCCEEDED", 0, 1, "none")
    assert job.command == "echo hello lr=0.1 'name=a b'"
    assert job.cluster_name == "sd-hello" and job.name == "sd-hello-1"
    assert Path(job.log_path).read_text() == "hello lr=0.1 name=a b\n"
    exp = fresh(exp)
    assert (exp.status_reason, exp.observed_generation) == ("Succeeded", exp.generation)
    kinds = list(exp.events.order_by("created_at", "id").values_list("kind", flat=True))
    assert kinds[:2] == ["desired_state", "launch"] and "job" in kinds
    # Nothing more happens on further passes: one job per run.
    run_poll()
    run_reconcile_all()
    assert exp.jobs.count() == 1


def test_failed_job_keeps_its_exit_code(local_root):
    exp = ExperimentFactory(name="boom", command="echo oops >&2; exit 4")
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "FAILED", message="FAILED")
    job = exp.jobs.get()
    assert (job.status, job.exit_code, job.failure_kind) == ("FAILED", 4, "user")
    assert "oops" in Path(job.log_path).read_text()
    assert fresh(exp).status_reason == "Failed"


def test_a_run_that_gave_up_still_has_its_idle_cluster_stopped(local_root):
    exp = ExperimentFactory(name="giveup", command="exit 3", autostop_minutes=0)
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "FAILED", message="FAILED")
    drive_until(
        lambda: Cluster.objects.filter(name="sd-giveup", status="STOPPED").exists(), message="the idle cluster stopped"
    )
    for _ in range(3):  # later passes neither give up again nor touch the cluster
        run_poll()
        run_reconcile_all()
    exp = fresh(exp)
    assert exp.phase == "FAILED" and exp.desired_state == "RUNNING"
    assert exp.events.filter(kind="give_up").count() == 1
    assert exp.events.filter(kind="stop").count() == 1


def test_stopped_cancels_and_terminated_cleans_up_keeping_history(local_root):
    exp = ExperimentFactory(name="long", command="echo started; sleep 300")
    set_state(exp, "RUNNING")
    drive_until(lambda: exp.jobs.filter(status="RUNNING").exists(), message="RUNNING")

    exp = fresh(exp)
    set_state(exp, "STOPPED")
    drive_until(lambda: fresh(exp).phase == "STOPPED", message="STOPPED")
    job = exp.jobs.get()
    assert job.status == "CANCELLED" and job.ended_at is not None
    assert Cluster.objects.get(name="sd-long").status == "STOPPED"
    assert (local_root / "sd-long").is_dir()

    exp = fresh(exp)
    set_state(exp, "TERMINATED")
    drive_until(lambda: fresh(exp).phase == "TERMINATED", message="TERMINATED")
    assert not (local_root / "sd-long").exists()
    assert not Cluster.objects.filter(name="sd-long").exists()
    # The history stays, log included.
    job = Job.objects.get(pk=job.pk)
    assert job.status == "CANCELLED"
    assert Path(job.log_path).read_text().startswith("started")
    kinds = set(exp.events.values_list("kind", flat=True))
    assert {"desired_state", "launch", "cancel", "stop", "down"} <= kinds


def test_on_failure_with_two_restarts_runs_exactly_three_times(local_root):
    exp = ExperimentFactory(name="flaky", command="echo try; exit 1", restart_policy="on_failure", max_restarts=2)
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "FAILED", message="give up")
    for _ in range(5):  # more passes change nothing
        run_poll()
        run_reconcile_all()
    jobs = list(exp.jobs.order_by("attempt"))
    assert [(j.attempt, j.status, j.exit_code) for j in jobs] == [(1, "FAILED", 1), (2, "FAILED", 1), (3, "FAILED", 1)]
    exp = fresh(exp)
    assert exp.status_reason == "RestartLimitReached"
    assert "Failed 3 times (max_restarts=2)" in exp.status_message
    assert exp.failure_count == 3
    assert Event.objects.filter(experiment=exp, kind="give_up").count() == 1


def test_backoff_delays_the_next_attempt(local_root, settings):
    settings.SKYDECK_BACKOFF_BASE = 3600
    exp = ExperimentFactory(name="slow-retry", command="exit 2", restart_policy="on_failure", max_restarts=5)
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "BACKOFF", message="BACKOFF")
    exp = fresh(exp)
    assert exp.jobs.count() == 1
    assert exp.failure_count == 1 and exp.next_attempt_at is not None
    assert exp.status_reason == "BackingOff"
    # A new run (the user sets RUNNING again) starts over at once.
    set_state(exp, "STOPPED")
    set_state(exp, "RUNNING")
    drive_until(lambda: exp.jobs.count() == 2, message="second run")


def test_restart_cancels_the_active_job_and_runs_the_new_spec(local_root):
    exp = ExperimentFactory(name="edit-me", command="sleep 300")
    set_state(exp, "RUNNING")
    drive_until(lambda: exp.jobs.filter(status="RUNNING").exists(), message="RUNNING")
    intent.edit(intent.Actor.system("cli"), exp, {"command": "echo v2"})
    exp = fresh(exp)
    assert exp.generation == 2 and exp.out_of_date
    # Out of date is shown, not acted on: the job keeps running.
    run_reconcile_all()
    assert exp.jobs.get().status == "RUNNING"
    restart(exp)
    drive_until(lambda: fresh(exp).phase == "SUCCEEDED", message="restarted")
    first, second = exp.jobs.order_by("attempt")
    assert (first.status, first.generation) == ("CANCELLED", 1)
    assert (second.status, second.generation, second.command) == ("SUCCEEDED", 2, "echo v2")


def test_a_bad_spec_stops_with_a_reason_and_no_retry(local_root):
    exp = ExperimentFactory(name="two-nodes", command="true", num_nodes=2, restart_policy="always", max_restarts=5)
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "FAILED", message="FAILED")
    job = exp.jobs.get()
    assert (job.status, job.failure_reason) == ("FAILED_LAUNCH", "InvalidSpec")
    assert "one node" in fresh(exp).status_message


def test_lost_job_is_infra_failure_and_retried(local_root):
    import json
    import os
    import signal

    exp = ExperimentFactory(name="victim", command="sleep 300; exit 0")
    set_state(exp, "RUNNING")
    drive_until(lambda: exp.jobs.filter(status="RUNNING").exists(), message="RUNNING")
    job = exp.jobs.get()
    meta = local_root / "sd-victim" / "jobs" / str(job.sky_job_id) / "meta.json"
    os.killpg(json.loads(meta.read_text())["pgid"], signal.SIGKILL)
    drive_until(lambda: exp.jobs.count() == 2, message="relaunch after an infra failure")
    job.refresh_from_db()
    assert (job.status, job.failure_kind) == ("FAILED_DRIVER", "infra")


def test_crash_between_intent_and_launch_is_healed(local_root, settings):
    """A Job row in LAUNCHING that never reached the backend is submitted again, once."""
    settings.SKYDECK_RESUBMIT_AFTER = 0
    exp = ExperimentFactory(name="crashy", command="echo healed", desired_state="RUNNING", run_number=1)
    Job.objects.create(
        experiment=exp,
        attempt=1,
        run_number=1,
        generation=1,
        backend="local",
        name="sd-crashy-1",
        command="echo healed",
        cluster_name="sd-crashy",
        status="LAUNCHING",
    )
    drive_until(lambda: fresh(exp).phase == "SUCCEEDED", message="healed")
    assert exp.jobs.count() == 1
    assert Path(exp.jobs.get().log_path).read_text() == "healed\n"


REWRITE_META = (
    "sleep 1; python3 -c \"import json, os; p = os.environ['SKYDECK_JOB_DIR'] + '/meta.json'; "
    "m = json.load(open(p)); m['log_path'] = '/etc/hostname'; json.dump(m, open(p, 'w'))\"; echo mine"
)


def test_a_job_cannot_point_skydeck_at_another_file(local_root, owner_client):
    """The job rewrites the metadata the local backend keeps; SkyDeck reads only the file it named itself."""
    from django.urls import reverse

    exp = ExperimentFactory(name="sneaky-job", command=REWRITE_META)
    set_state(exp, "RUNNING")
    drive_until(lambda: fresh(exp).phase == "SUCCEEDED", message="the job to end")
    job = exp.jobs.get()
    assert job.log_path.endswith(f"{job.pk}-sd-sneaky-job-1.log") and "hostname" not in job.log_path
    body = owner_client.get(reverse("experiments:job_log", args=["sneaky-job", 1]), headers={"HX-Request": "true"})
    assert "mine" in body.content.decode()


def test_a_quiet_pass_reads_once_for_all_and_claims_nothing(django_assert_max_num_queries):
    """Running experiments with nothing new: a fixed number of queries, whatever their number, and no claim."""
    from clusters.models import Cluster
    from experiments.reconciler import reconcile_all
    from tests.factories import JobFactory

    def running(n, start):
        for i in range(start, start + n):
            exp = ExperimentFactory(name=f"quiet-{i}", desired_state="RUNNING", run_number=1)
            JobFactory(
                experiment=exp, attempt=1, run_number=1, status="RUNNING", sky_job_id=1, cluster_name=exp.cluster_name
            )
            Cluster.objects.create(backend="local", name=exp.cluster_name, status="UP")

    running(5, 0)
    reconcile_all()  # the first pass records their status
    with django_assert_max_num_queries(8) as few:
        outcomes = reconcile_all()
    running(25, 5)
    reconcile_all()
    with django_assert_max_num_queries(len(few.captured_queries)):
        outcomes = reconcile_all()
    assert len(outcomes) == 30 and not any(o.actions for o in outcomes)
    assert not Experiment.objects.exclude(claimed_by="").exists()
