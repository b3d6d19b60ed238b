"""End to end on the local Slurm cluster: real SkyPilot, a real Celery worker, real jobs.

Run with the cluster up (``make e2e-up``) and the SkyPilot client pointed at it:

    SKYDECK_E2E_SLURM=1 SKYDECK_TEST_SKY_HOME=<client home> SKYPILOT_API_SERVER_LOCAL_PORT=<port> \
        pytest -m slurm -s

Every change of desired state goes through the worker (the model enqueues a
reconcile on commit), and the test drives polls by enqueueing the poll task,
so the worker does all SkyPilot work. Measured times are printed, not asserted.
"""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clusters.models import Cluster
from experiments.models import Experiment, Job
from tests.factories import ExperimentFactory
from tests.support import drive_until, poll_through_worker, require, set_state

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skypilot,
    pytest.mark.celery,
    pytest.mark.redis,
    # SkyDeck's own intervals while jobs run, not the one-second ones of the local tests: on this
    # one node every poll and log refresh costs processes on the same two cores the clusters use.
    # With six clusters UP here a queue request can take a minute (docs/skypilot.md): the poll waits longer
    # for its answers than it would for a server of its own.
    pytest.mark.worker_env(
        SKYDECK_POLL_INTERVAL="5",
        SKYDECK_POLL_ACTIVE_INTERVAL="5",
        SKYDECK_LOG_SYNC_INTERVAL="5",
        SKYDECK_POLL_TIMEOUT="120",
        SKYDECK_POLL_TIME_LIMIT="180",
    ),  # fmt: skip
]

TIMEOUT = 300.0


@pytest.fixture
def slurm_worker(request, transactional_db):
    """A Celery worker whose SkyPilot client talks to the Slurm cluster's API server."""
    require(os.environ.get("SKYDECK_E2E_SLURM") == "1", "end-to-end Slurm tests run with SKYDECK_E2E_SLURM=1")
    home = os.environ.get("SKYDECK_TEST_SKY_HOME", "")
    require(
        bool(home) and os.path.exists(os.path.join(home, ".sky", "config.yaml")),
        "SKYDECK_TEST_SKY_HOME must be the Slurm cluster's SkyPilot client home (make e2e-up)",
    )
    port = os.environ.get("SKYPILOT_API_SERVER_LOCAL_PORT", "46580")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as resp:
            healthy = resp.status == 200
    except OSError:
        healthy = False
    require(healthy, f"no SkyPilot API server on 127.0.0.1:{port} (make e2e-up)")
    os.environ.pop("SKYPILOT_API_SERVER_ENDPOINT", None)
    _down_leftover_clusters()  # a run killed half-way may have left some: their jobs' names would be taken
    worker = request.getfixturevalue("celery_worker_process")
    yield worker
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(_story(worker[1]))
    _down_leftover_clusters()


def _story(log, lines=150):
    """What a failed run leaves for whoever reads CI's output: every experiment's history, the worker's steps."""
    told = [f"E2E-HISTORY {history(exp)}" for exp in Experiment.objects.order_by("id")]
    acted = re.compile(r"'[\w-]+: (?!nothing )[a-z_]+ \(")  # a reconcile outcome that did something
    steps = [
        line[:400]
        for line in Path(log).read_text(errors="replace").splitlines()
        if "WARNING/" in line or "ERROR/" in line or acted.search(line) or ("poll[" in line and ": ['" in line)
    ]
    return "\n".join([*told, "E2E-WORKER (its last steps):", *steps[-lines:]])


def patiently(fn, *args, tries=6, pause=10.0):
    """A call of the test's own to the SkyPilot backend, asked again while the API server is too busy to answer."""
    from clusters.backends.base import BackendUnreachable

    for attempt in range(tries):
        try:
            return fn(*args)
        except BackendUnreachable:
            if attempt == tries - 1:
                raise
            time.sleep(pause)


def _down_leftover_clusters():
    """A test that failed half-way must not leave its Slurm allocation to the next run."""
    import sky

    from clusters.backends import get_backend

    backend = get_backend("skypilot")
    submissions = []
    for name in patiently(sky_cluster_names):
        if name.startswith("sd-e2e-"):
            submission = patiently(backend.down, name)
            if submission is not None:
                submissions.append(submission)
    for submission in submissions:  # submitted together, then waited for
        try:
            sky.get(submission.request_id)
        except Exception as exc:  # noqa: BLE001 - gone already, or failed: the next run tries again
            print(f"leftover teardown: {exc}")


def slurm_experiment(name, command, **kwargs):
    return ExperimentFactory(
        name=name, command=command, backend="skypilot", infra="slurm", cpus="1", memory="1", **kwargs
    )


def job_of(exp, attempt=None):
    """The experiment's job ``attempt``, or its latest (a launch the node could not set up is retried)."""
    jobs = Job.objects.filter(experiment=exp)
    return jobs.filter(attempt=attempt).first() if attempt else jobs.order_by("-attempt").first()


def job_status(exp, attempt=None):
    job = job_of(exp, attempt)
    return job.status if job else None


def read_log(job):
    """The copy SkyDeck keeps of a job's output (the worker refreshes it; the page reads it)."""
    if job is None:
        return ""
    job.refresh_from_db()
    return Path(job.log_path).read_text() if job.log_path and Path(job.log_path).exists() else ""


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
    set_state(exp, "TERMINATED")
    drive_until(
        lambda: (
            Experiment.objects.get(pk=exp.pk).phase == "TERMINATED"
            and not Cluster.objects.filter(backend="skypilot", name=exp.cluster_name).exists()
        ),
        timeout=TIMEOUT,
        message=f"{exp.name} terminated",
    )


def poll_seconds(samples=1):
    """Median wall time of a poll made here (beside the worker's), in seconds."""
    from experiments.observe import poll_all

    times = []
    for _ in range(samples):
        started = time.monotonic()
        poll_all(["skypilot"])
        times.append(time.monotonic() - started)
    return sorted(times)[len(times) // 2]


def history(exp):
    """What an assertion about ``exp`` prints when it fails: its jobs and its events, in order."""
    jobs = [(j.attempt, j.status, j.failure_reason, j.error_message[-200:]) for j in exp.jobs.order_by("attempt")]
    return exp.name, jobs, list(exp.events.order_by("id").values_list("message", flat=True))


def saw(exp, status, attempt=None):
    """Whether the poller ever recorded the experiment's job ``attempt`` (default: its latest) in ``status``."""
    job = job_of(exp, attempt)
    return exp.events.filter(kind__in=["job", "failure"], job=job, message__contains=f"→ {status}").exists()


@pytest.fixture
def short_idle(settings):
    """Finished runs' clusters go after one idle minute (the worker reads the same setting)."""
    os.environ["SKYDECK_IDLE_GRACE_SECONDS"] = "20"
    settings.SKYDECK_IDLE_GRACE_SECONDS = 20
    yield 1
    os.environ.pop("SKYDECK_IDLE_GRACE_SECONDS", None)


RELEASE = Path("/tmp/skydeck-e2e-release")  # the Slurm jobs run on this machine: the test ends them when it wants


def until_released(seconds=900, word="tick"):
    """Shell that prints a line a second until the test touches RELEASE (or ``seconds`` pass)."""
    return f"i=0; while [ ! -e {RELEASE} ] && [ $i -lt {seconds} ]; do i=$((i+1)); echo {word} $i; sleep 1; done"


def crashed_launch(name, command, **kwargs):
    """The worker died after SkyPilot registered the launch, before SkyDeck saved the request id.

    Reproduced exactly: the Job row is left in LAUNCHING without its request id, as the
    dead worker left it, and the launch is submitted here. The worker must find the
    request at the API server and adopt it: one SkyPilot job, not two.
    """
    from clusters.backends import get_backend
    from experiments import logs
    from experiments.launch import launch_spec

    exp = slurm_experiment(name, command, desired_state="RUNNING", run_number=1, **kwargs)
    job = Job.objects.create(
        experiment=exp, attempt=1, run_number=1, generation=1, backend="skypilot", name=f"sd-{name}-1",
        command=command, cluster_name=f"sd-{name}", status="LAUNCHING",
    )  # fmt: skip
    job.log_path = logs.path_for(job)
    job.save(update_fields=["log_path"])
    get_backend("skypilot").launch(launch_spec(exp, 1, log_path=job.log_path))  # registered; never saved
    return exp


# SkyPilot refreshes the status of a cluster with autostop set (a Slurm query and an SSH round trip)
# on every request about it: with several clusters on this one node's two cores that doubles the cost
# of every queue. Here SkyDeck's own idle timer is the one that tears the finished runs' clusters down;
# the API server test below keeps SkyPilot's autostop on and checks it is set.
@pytest.mark.worker_env(SKYDECK_SKYPILOT_AUTOSTOP="0")
def test_a_sweep_runs_side_by_side_to_every_outcome_and_leaves_no_cluster_up(short_idle, slurm_worker):
    """Four experiments at once on four clusters, each taking one path a sweep's children take.

    - ok: runs to success (exit code 0, output and flags in the log copy, cost 0 on Slurm);
    - fail: exits 3, is restarted once by exec on its UP cluster, then gives up (exit codes [3]);
    - long: set STOPPED while running: cancelled, its cluster kept (Slurm cannot stop), then TERMINATED;
    - crash: its launch was registered by a worker that died before saving it: adopted, never doubled.
    Then the idle policy tears down the finished runs' clusters. One test for all of it: on this one
    node each launch costs about a minute of both cores, so the paths share the clusters' start-up.
    Four, not six: with six clusters on this node's two cores (their skylets collide on one port and
    restart in a loop) the API server stops answering its health check for minutes; bench/skypilot.py
    measures six, and docs/skypilot.md has the numbers.
    """
    from clusters.backends import get_backend

    RELEASE.unlink(missing_ok=True)
    wait = until_released()
    ok = slurm_experiment(
        "e2e-ok", f'echo "hello from skydeck"; {wait}; echo done', flags={"lr": 0.1}, autostop_minutes=short_idle
    )

    # The first alone: the time to RUNNING of one launch, and a poll with one cluster UP.
    started = time.monotonic()
    set_state(ok, "RUNNING")
    drive_until(lambda: job_status(ok) in {"RUNNING", "SUCCEEDED", "FAILED", "FAILED_LAUNCH"}, timeout=TIMEOUT,
                message="the first job to run")  # fmt: skip
    assert job_status(ok) == "RUNNING", job_of(ok).error_message
    job = job_of(ok)
    assert job.sky_job_id is not None and job.cluster_name == "sd-e2e-ok"
    print(f"\nE2E-TIMING set RUNNING -> job RUNNING (one launch): {time.monotonic() - started:.1f}s")
    print(f"E2E-CALLS one poll with one owned UP cluster: {calls_of_one_poll()}")
    one = poll_seconds(samples=2)

    # The other three together, as a sweep starts them.
    started = time.monotonic()
    crash = crashed_launch("e2e-crash", f"echo once; {wait}", autostop_minutes=short_idle)
    fail = slurm_experiment("e2e-fail", f"{until_released(word='waiting')}; echo failing; exit 3",
                            restart_policy="on_failure", max_restarts=1, autostop_minutes=short_idle)  # fmt: skip
    long = slurm_experiment("e2e-long", "echo start; sleep 900")
    for exp in (fail, long):
        set_state(exp, "RUNNING")
    every = [ok, crash, fail, long]
    rest = every[1:]
    drive_until(lambda: all(job_status(e) == "RUNNING" for e in rest), timeout=2 * TIMEOUT,
                message="the other three to run")  # fmt: skip
    print(f"\nE2E-SCALE three set RUNNING together -> all three jobs RUNNING: {time.monotonic() - started:.0f}s")
    assert all(job_status(e) == "RUNNING" for e in every)
    many = poll_seconds()
    print(f"E2E-SCALE poll with 1 cluster UP: {one:.1f}s; with 4 UP: {many:.1f}s ({many / one:.2f}x)")

    # The crashed launch was found at the API server and adopted: one SkyPilot job, not two.
    assert crash.events.filter(kind="adopt").exists(), list(crash.events.values_list("message", flat=True))
    names = [j.name for j in patiently(get_backend("skypilot").list_jobs, "sd-e2e-crash")]
    assert len(names) == len(set(names)) and crash.jobs.filter(status="RUNNING").count() == 1, names
    if crash.jobs.count() == 1:  # (unless this node failed to set the cluster up and SkyDeck retried)
        assert names == ["sd-e2e-crash-1"]

    # STOPPED on Slurm: the job is cancelled, the cluster kept with a clear reason, no loop of retries.
    long.refresh_from_db()
    set_state(long, "STOPPED")
    drive_until(lambda: Experiment.objects.get(pk=long.pk).phase == "STOPPED", timeout=TIMEOUT,
                message="the long experiment to stop")  # fmt: skip
    long.refresh_from_db()
    long_job = job_of(long)
    assert long_job.status == "CANCELLED"
    on_cluster = {j.job_id: j.status for j in patiently(get_backend("skypilot").list_jobs, long.cluster_name)}
    assert on_cluster[long_job.sky_job_id] == "CANCELLED"
    assert long.status_reason == "StopNotSupported" and "TERMINATED" in long.status_message
    assert Cluster.objects.get(backend="skypilot", name=long.cluster_name).status == "UP"
    stops = long.events.filter(kind="stop").count()
    poll_through_worker()
    assert long.events.filter(kind="stop").count() == stops
    long.refresh_from_db()
    set_state(long, "TERMINATED")  # torn down while the others finish

    finishing = [ok, crash]
    released = {exp.pk: job_of(exp) for exp in finishing}  # the attempts that wait for the release
    RELEASE.touch()
    drive_until(lambda: all(Experiment.objects.get(pk=e.pk).phase in {"SUCCEEDED", "FAILED"} for e in finishing),
                timeout=2 * TIMEOUT, message="the released runs to end")  # fmt: skip
    drive_until(lambda: Experiment.objects.get(pk=fail.pk).phase == "FAILED", timeout=TIMEOUT,
                message="the failing experiment to give up")  # fmt: skip
    # The exit codes come with the last copy of each job's log: within the poll when SkyPilot answers
    # in time, else from the next log refresh.
    drive_until(lambda: not fail.jobs.filter(exit_codes__isnull=True).exists(), timeout=120.0, message="exit codes")

    for exp in finishing:
        ran = Job.objects.get(pk=released[exp.pk].pk)
        job = job_of(exp)
        if job.pk != ran.pk:
            # The node failed the released attempt under SkyDeck (its driver died, or its cluster stopped
            # answering): SkyDeck ran it again, as it must after an infrastructure failure, never a user's.
            print(f"E2E-NOTE {exp.name} was run again after an infrastructure failure: {history(exp)}")
            assert ran.failure_kind == "infra" and ran.status in {"FAILED", "FAILED_DRIVER", "LOST"}, history(exp)
        assert job.status == "SUCCEEDED" and job.exit_code == 0, history(exp)
        assert saw(exp, "RUNNING", ran.attempt) and saw(exp, "SUCCEEDED"), history(exp)
        assert job.log_complete and "tick 1\n" in read_log(ran), (exp.name, read_log(ran)[-300:])
    ok_job = job_of(ok)
    assert ok_job.cost == 0.0  # SkyPilot's cost report prices a Slurm allocation at zero
    assert "hello from skydeck" in read_log(ok_job) and "done lr=0.1" in read_log(ok_job)

    # One run, one restart by exec on the UP cluster (max_restarts=1), then it gives up with the reason.
    fail.refresh_from_db()
    jobs = list(fail.jobs.exclude(status="FAILED_LAUNCH").order_by("attempt"))  # (a launch may need a retry here)
    assert [j.status for j in jobs] == ["FAILED", "FAILED"], [(j.status, j.error_message) for j in jobs]
    assert all(j.failure_kind == "user" and j.sky_job_id is not None for j in jobs)
    assert [(j.exit_code, j.exit_codes) for j in jobs] == [(3, [3]), (3, [3])]
    # The restart went to the same cluster's queue (exec): its job id follows the first one's.
    assert jobs[1].cluster_name == jobs[0].cluster_name and jobs[1].sky_job_id == jobs[0].sky_job_id + 1
    assert fail.status_reason == "RestartLimitReached"
    assert "failing" in read_log(jobs[0]) and "failing" in read_log(jobs[1])
    second = jobs[1].started_at or jobs[1].submitted_at or jobs[1].created_at
    gap = (second - jobs[0].ended_at).total_seconds()
    print(f"E2E-TIMING restart by exec: attempt 1 ended -> attempt 2 started {gap:.1f}s")

    # Nobody asked to stop the others: the idle policy tears the Slurm clusters down (Slurm cannot stop).
    started = time.monotonic()
    drive_until(lambda: not Cluster.objects.filter(backend="skypilot", name__startswith="sd-e2e-").exists(),
                timeout=TIMEOUT, message="every cluster to go")  # fmt: skip
    print(f"E2E-IDLE idle clusters gone {time.monotonic() - started:.0f}s after the runs ended (idle 1 min)")
    assert not {n for n in patiently(sky_cluster_names) if n.startswith("sd-e2e-")}
    for exp in finishing:
        exp.refresh_from_db()
        assert exp.desired_state == "RUNNING" and exp.phase == "SUCCEEDED"  # the run's outcome stays
    long.refresh_from_db()
    assert long.phase == "TERMINATED" and job_of(long).status == "CANCELLED"
    # The history stays: jobs, statuses, ids and output, though every cluster is gone.
    assert {"launch", "job"} <= set(ok.events.values_list("kind", flat=True))
    assert "hello from skydeck" in read_log(job_of(ok)) and "failing" in read_log(jobs[0])


def sky_api(action):
    """Stop or start the Slurm cluster's API server, as its owner would."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SKYPILOT_API_SERVER_ENDPOINT", "SKYPILOT_DISABLE_LOCAL_API_SERVER")
    }
    env["HOME"] = os.environ["SKYDECK_TEST_SKY_HOME"]
    sky = str(Path(sys.executable).parent / "sky")
    subprocess.run([sky, "api", action], env=env, capture_output=True, timeout=240, check=True)


def test_an_api_server_restart_mid_launch_ends_with_the_job_running_and_logs_stay_readable(
    slurm_worker, owner_client, settings
):
    from django.urls import reverse

    from clusters.backends import get_backend

    RELEASE.unlink(missing_ok=True)
    ticking = slurm_experiment("e2e-reader", f"echo start; {until_released(600, word='line')}; echo end")
    set_state(ticking, "RUNNING")
    drive_until(lambda: "line 5" in read_log(job_of(ticking)), timeout=TIMEOUT, message="output to copy")
    # SkyPilot's own autostop was set at launch (down: Slurm cannot stop), so the cluster goes even
    # while SkyDeck is down.
    assert Cluster.objects.get(backend="skypilot", name="sd-e2e-reader").autostop == settings.SKYDECK_IDLE_MINUTES

    late = slurm_experiment("e2e-late", f"echo late; {until_released(600)}; echo still")
    set_state(late, "RUNNING")
    drive_until(
        lambda: (j := job_of(late)) is not None and bool(j.launch_request_id), timeout=60, message="a launch in flight"
    )
    sky_api("stop")
    try:
        # The page reads SkyDeck's copy: the log of the running job is there while SkyPilot is down.
        url = reverse("experiments:job_log", args=["e2e-reader", 1])
        body = owner_client.get(url, headers={"HX-Request": "true"}).content.decode()
        assert "line 5" in body and "hx-get" in body
    finally:
        sky_api("start")
    drive_until(lambda: late.jobs.filter(status="RUNNING").exists(), timeout=2 * TIMEOUT,
                message="the late job to run")  # fmt: skip
    named = [j for j in patiently(get_backend("skypilot").list_jobs, "sd-e2e-late") if j.status == "RUNNING"]
    assert len(named) == 1, named
    print("\nE2E-RESTART", list(late.events.order_by("id").values_list("message", flat=True)))
    RELEASE.touch()
    terminate(late)
    terminate(ticking)
