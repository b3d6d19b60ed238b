"""observe.apply: what a poll's snapshot may and may not conclude about jobs."""

from datetime import timedelta

import pytest
from django.utils import timezone

from clusters.backends.base import ClusterInfo, JobInfo
from clusters.poller import BackendPoll
from experiments.observe import apply
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db


def snapshot(observed_at, clusters=(), jobs=None):
    return BackendPoll(
        backend="local",
        observed_at=observed_at,
        clusters={c.name: c for c in clusters},
        jobs=jobs or {},
    )


def running_job(submitted_at, name="obs"):
    exp = ExperimentFactory(name=name, desired_state="RUNNING", run_number=1)
    return JobFactory(
        experiment=exp,
        attempt=1,
        run_number=1,
        status="RUNNING",
        sky_job_id=1,
        cluster_name=f"sd-{name}",
        submitted_at=submitted_at,
    )


def test_a_job_submitted_after_the_snapshot_is_not_lost():
    now = timezone.now()
    job = running_job(submitted_at=now)
    apply(snapshot(observed_at=now - timedelta(seconds=1)))  # asked before the job existed
    job.refresh_from_db()
    assert job.status == "RUNNING"


def test_a_job_missing_from_a_later_snapshot_is_lost_as_infra():
    now = timezone.now()
    job = running_job(submitted_at=now - timedelta(seconds=5))
    changed = apply(snapshot(observed_at=now))
    job.refresh_from_db()
    assert (job.status, job.failure_kind, job.failure_reason) == ("LOST", "infra", "Lost")
    assert "vanished" in job.error_message
    assert changed == {job.experiment_id}


def test_a_job_missing_from_its_clusters_queue_is_lost():
    now = timezone.now()
    job = running_job(submitted_at=now - timedelta(seconds=5), name="q")
    cluster = ClusterInfo(name="sd-q", status="UP")
    apply(snapshot(observed_at=now, clusters=[cluster], jobs={"sd-q": []}))
    job.refresh_from_db()
    assert job.status == "LOST" and "queue" in job.error_message


def test_the_queue_entry_updates_status_exit_code_and_times():
    now = timezone.now()
    job = running_job(submitted_at=now - timedelta(seconds=5), name="done")
    info = JobInfo(
        cluster_name="sd-done",
        job_id=1,
        name=job.name,
        status="FAILED",
        exit_code=3,
        started_at=now - timedelta(seconds=4),
        ended_at=now - timedelta(seconds=1),
    )
    apply(snapshot(observed_at=now, clusters=[ClusterInfo(name="sd-done", status="UP")], jobs={"sd-done": [info]}))
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.failure_kind, job.ended_at) == ("FAILED", 3, "user", info.ended_at)
    assert job.events.filter(kind="failure").exists()


def test_a_stopped_cluster_under_a_running_job_is_lost():
    now = timezone.now()
    job = running_job(submitted_at=now - timedelta(seconds=5), name="pre")
    apply(snapshot(observed_at=now, clusters=[ClusterInfo(name="sd-pre", status="STOPPED")]))
    job.refresh_from_db()
    assert job.status == "LOST" and "preempted" in job.error_message


def skypilot_job_whose_copy_says(tmp_path, footer, name="idle", exit_codes=None):
    exp = ExperimentFactory(
        name=name, backend="skypilot", desired_state="RUNNING", run_number=1, restart_policy="always"
    )
    copy = tmp_path / f"{name}.log"
    copy.write_text(f"step 1\nstep 2\n{footer}\n")
    return JobFactory(
        experiment=exp, attempt=1, run_number=1, status="RUNNING", sky_job_id=1, cluster_name=f"sd-{name}",
        backend="skypilot", submitted_at=timezone.now() - timedelta(minutes=20), log_path=str(copy),
        log_complete=True, exit_codes=exit_codes,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("footer", "codes", "status", "exit_code", "kind"),
    [
        ("✓ Job finished (status: SUCCEEDED).", [0], "SUCCEEDED", 0, "none"),
        ("Job finished (status: FAILED).", [3], "FAILED", 3, "user"),
    ],
)
def test_a_cluster_torn_down_by_its_idle_timer_before_a_poll_saw_the_end_keeps_the_printed_end(
    tmp_path, footer, codes, status, exit_code, kind
):
    """SkyPilot's autostop tears a cluster down only after its job ended: the copy says how, and it is not run again."""
    job = skypilot_job_whose_copy_says(tmp_path, footer, exit_codes=codes)
    apply(BackendPoll(backend="skypilot", observed_at=timezone.now()))
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.failure_kind) == (status, exit_code, kind)
    assert "before its cluster was torn down" in job.error_message


def test_a_vanished_cluster_whose_copy_shows_no_end_loses_the_job(tmp_path):
    job = skypilot_job_whose_copy_says(tmp_path, "still going", name="gone")
    job.log_complete = False
    job.save(update_fields=["log_complete"])
    apply(BackendPoll(backend="skypilot", observed_at=timezone.now()))
    job.refresh_from_db()
    assert job.status == "LOST" and "vanished" in job.error_message
