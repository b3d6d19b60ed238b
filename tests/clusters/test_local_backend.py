"""The local backend with real processes."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clusters.backends.base import ClusterGone, InvalidSpec, LaunchSpec
from clusters.backends.local import LocalBackend, _group_alive
from tests.conftest import ROOT, wait_for


@pytest.fixture
def backend(tmp_path):
    b = LocalBackend(root=tmp_path / "clusters")
    yield b
    from tests.conftest import _kill_leftover_jobs

    _kill_leftover_jobs(b.root)


def spec(command, name="sd-exp", attempt=1, **kw):
    return LaunchSpec(job_name=f"{name}-{attempt}", cluster_name=name, command=command, **kw)


def job_of(backend, cluster, job_id):
    return next(j for j in backend.list_jobs(cluster) if j.job_id == job_id)


def wait_status(backend, cluster, job_id, statuses, timeout=20):
    return wait_for(
        lambda: (j := job_of(backend, cluster, job_id)).status in statuses and j,
        timeout=timeout,
        message=f"job {job_id} to reach {statuses}",
    )


def read_log(backend, job):
    return backend.read_log(job.cluster_name, job.job_id, job.log_path, 0).text


def test_success_records_exit_code_and_log(backend):
    sub = backend.launch(spec("echo hello from $SKYDECK_JOB_NAME; echo $GREETING", envs={"GREETING": "hi there"}))
    job = wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    assert job.exit_code == 0
    assert job.started_at and job.ended_at and job.ended_at >= job.started_at
    assert read_log(backend, job) == "hello from sd-exp-1\nhi there\n"
    [cluster] = backend.list_clusters()
    assert (cluster.name, cluster.status) == ("sd-exp", "UP")


def test_nonzero_exit_is_failed_with_its_code(backend):
    sub = backend.launch(spec("echo about to fail; exit 7"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"FAILED"})
    assert job.exit_code == 7
    assert "about to fail" in read_log(backend, job)


def test_setup_failure_is_failed_setup(backend):
    sub = backend.launch(spec("echo never", setup="exit 3"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"FAILED_SETUP"})
    assert job.exit_code == 3
    assert "never" not in read_log(backend, job)


def test_setup_runs_before_command(backend):
    sub = backend.launch(spec("cat marker", setup="echo prepared > marker"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    assert read_log(backend, job) == "prepared\n"


def test_cancel_kills_the_process_group(backend, tmp_path):
    child_pid_file = tmp_path / "child.pid"
    sub = backend.launch(spec(f"sleep 300 & echo $! > {child_pid_file}; echo started; wait"))
    wait_for(lambda: child_pid_file.exists() and child_pid_file.read_text().strip(), message="child pid")
    child = int(child_pid_file.read_text())
    wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    backend.cancel("sd-exp", sub.job_id)
    job = wait_status(backend, "sd-exp", sub.job_id, {"CANCELLED"})
    assert job.ended_at is not None
    wait_for(lambda: not _alive(child), message="grandchild to die")


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_stop_ends_processes_and_keeps_the_directory(backend):
    sub = backend.launch(spec("sleep 300"))
    wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    backend.stop("sd-exp")
    [cluster] = backend.list_clusters()
    assert cluster.status == "STOPPED"
    assert (backend.root / "sd-exp").is_dir()
    assert job_of(backend, "sd-exp", sub.job_id).status == "CANCELLED"
    with pytest.raises(InvalidSpec):
        backend.exec(spec("echo no", attempt=2))
    backend.start("sd-exp")
    sub2 = backend.exec(spec("echo again", attempt=2))
    assert wait_status(backend, "sd-exp", sub2.job_id, {"SUCCEEDED"}).job_id == sub.job_id + 1


def test_down_removes_the_directory_but_keeps_logs(backend):
    sub = backend.launch(spec("echo kept; sleep 300"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    wait_for(lambda: "kept" in read_log(backend, job), message="output")
    backend.down("sd-exp")
    assert not (backend.root / "sd-exp").exists()
    assert backend.list_clusters() == []
    with pytest.raises(ClusterGone):
        backend.list_jobs("sd-exp")
    assert Path(job.log_path).read_text() == "kept\n"


def test_submission_is_idempotent_by_job_name(backend):
    first = backend.launch(spec("sleep 300"))
    again = backend.launch(spec("sleep 300"))
    assert again.job_id == first.job_id
    assert len(backend.list_jobs("sd-exp")) == 1


def test_read_log_from_an_offset(backend):
    sub = backend.launch(spec("printf 'abcdef'"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    chunk = backend.read_log("sd-exp", job.job_id, job.log_path, 2)
    assert (chunk.text, chunk.offset, chunk.complete) == ("cdef", 6, True)
    assert backend.read_log("sd-exp", job.job_id, job.log_path, 6).text == ""


def test_a_killed_job_is_reported_failed_driver(backend):
    sub = backend.launch(spec("sleep 300"))
    wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    import json

    pgid = json.loads((backend.root / "sd-exp" / "jobs" / str(sub.job_id) / "meta.json").read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    job = wait_status(backend, "sd-exp", sub.job_id, {"FAILED_DRIVER"})
    assert job.exit_code is None


def test_validation_refuses_what_cannot_run_here(backend, tmp_path):
    with pytest.raises(InvalidSpec, match="one node"):
        backend.validate(spec("true", num_nodes=2))
    with pytest.raises(InvalidSpec, match="workdir"):
        backend.validate(spec("true", workdir=str(tmp_path / "missing")))
    with pytest.raises(InvalidSpec, match="Managed"):
        backend.validate(spec("true", managed=True))


def test_job_survives_the_death_of_the_process_that_launched_it(backend, tmp_path):
    """A "worker" process launches a job and is then SIGKILLed; the job runs on and records its exit code."""
    done = tmp_path / "done"
    launcher = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
        from clusters.backends.base import LaunchSpec
        from clusters.backends.local import LocalBackend
        b = LocalBackend(root={str(backend.root)!r})
        sub = b.launch(LaunchSpec(job_name="sd-exp-1", cluster_name="sd-exp",
                                  command="sleep 2; touch {done}; echo survived; exit 3"))
        print(sub.job_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    job_id = int(proc.stdout.strip())
    assert job_of(backend, "sd-exp", job_id).status in {"PENDING", "SETTING_UP", "RUNNING"}
    job = wait_status(backend, "sd-exp", job_id, {"FAILED"}, timeout=30)
    assert done.exists()
    assert job.exit_code == 3
    assert "survived" in read_log(backend, job)
    # A fresh backend object (a restarted worker) sees the same state on disk.
    assert job_of(LocalBackend(root=backend.root), "sd-exp", job_id).exit_code == 3
