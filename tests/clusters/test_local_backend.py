"""The local backend with real processes."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clusters.backends.base import ClusterGone, InvalidSpec, LaunchSpec
from clusters.backends.local import LocalBackend
from tests.support import ROOT, kill_leftover_jobs, wait_for


@pytest.fixture
def backend(tmp_path):
    b = LocalBackend(root=tmp_path / "clusters")
    yield b
    kill_leftover_jobs(b.root)


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


def read(submission):
    """The job's output, from the file the submission says it goes to."""
    return Path(submission.log_path).read_text()


def test_success_records_exit_code_and_log(backend):
    sub = backend.launch(spec("echo hello from $SKYDECK_JOB_NAME; echo $GREETING", envs={"GREETING": "hi there"}))
    job = wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    assert job.exit_code == 0
    assert job.started_at and job.ended_at and job.ended_at >= job.started_at
    assert read(sub) == "hello from sd-exp-1\nhi there\n"
    [cluster] = backend.list_clusters()
    assert (cluster.name, cluster.status) == ("sd-exp", "UP")


def test_nonzero_exit_is_failed_with_its_code(backend):
    sub = backend.launch(spec("echo about to fail; exit 7"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"FAILED"})
    assert job.exit_code == 7
    assert "about to fail" in read(sub)


def test_setup_failure_is_failed_setup(backend):
    sub = backend.launch(spec("echo never", setup="exit 3"))
    job = wait_status(backend, "sd-exp", sub.job_id, {"FAILED_SETUP"})
    assert job.exit_code == 3
    assert "never" not in read(sub)


def test_setup_runs_before_command(backend):
    sub = backend.launch(spec("cat marker", setup="echo prepared > marker"))
    wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    assert read(sub) == "prepared\n"


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
    wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    wait_for(lambda: "kept" in read(sub), message="output")
    backend.down("sd-exp")
    assert not (backend.root / "sd-exp").exists()
    assert backend.list_clusters() == []
    with pytest.raises(ClusterGone):
        backend.list_jobs("sd-exp")
    assert read(sub) == "kept\n"


def test_submission_is_idempotent_by_job_name(backend):
    first = backend.launch(spec("sleep 300"))
    again = backend.launch(spec("sleep 300"))
    assert again.job_id == first.job_id
    assert len(backend.list_jobs("sd-exp")) == 1


def test_the_output_goes_where_the_spec_says(backend, tmp_path):
    target = tmp_path / "chosen" / "by-skydeck.log"
    sub = backend.launch(spec("printf 'abcdef'", log_path=str(target)))
    wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    assert sub.log_path == str(target) and target.read_text() == "abcdef"


def test_the_job_sees_its_own_variables_and_none_of_the_services(backend, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/skydeck")
    monkeypatch.setenv("SECRET_KEY", "very-secret")
    sub = backend.launch(spec("env", envs={"MINE": "1"}))
    wait_status(backend, "sd-exp", sub.job_id, {"SUCCEEDED"})
    env = dict(line.split("=", 1) for line in read(sub).splitlines() if "=" in line)
    assert env["MINE"] == "1" and env["SKYDECK_JOB_NAME"] == "sd-exp-1" and "PATH" in env
    assert "DATABASE_URL" not in env and "SECRET_KEY" not in env


def test_the_job_records_its_process_group_before_anything_else(backend):
    sub = backend.launch(spec("sleep 300"))
    wait_status(backend, "sd-exp", sub.job_id, {"RUNNING"})
    job_dir = backend.root / "sd-exp" / "jobs" / str(sub.job_id)
    import json

    assert int((job_dir / "pgid").read_text()) == json.loads((job_dir / "meta.json").read_text())["pgid"]
    # Without the pgid SkyDeck wrote (a crash right after the process started), stop still finds the job.
    meta = json.loads((job_dir / "meta.json").read_text())
    (job_dir / "meta.json").write_text(json.dumps({"name": meta["name"], "submitted_at": meta["submitted_at"]}))
    backend.stop("sd-exp")
    assert job_of(backend, "sd-exp", sub.job_id).status == "CANCELLED"
    assert not backend_group_alive(meta["pgid"])


def backend_group_alive(pgid):
    from clusters.backends.local import _group_alive

    return _group_alive(pgid)


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
        print(sub.job_id, sub.log_path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    job_id, log_path = proc.stdout.split()
    job_id = int(job_id)
    assert job_of(backend, "sd-exp", job_id).status in {"PENDING", "SETTING_UP", "RUNNING"}
    job = wait_status(backend, "sd-exp", job_id, {"FAILED"}, timeout=30)
    assert done.exists()
    assert job.exit_code == 3
    assert "survived" in Path(log_path).read_text()
    # A fresh backend object (a restarted worker) sees the same state on disk.
    assert job_of(LocalBackend(root=backend.root), "sd-exp", job_id).exit_code == 3
