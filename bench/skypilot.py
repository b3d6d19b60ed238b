"""Measure SkyDeck on real SkyPilot at the scale of a sweep, on the local Slurm cluster (not a test).

    make e2e-up
    .venv/bin/python bench/skypilot.py [--write docs/skypilot-bench.md]

It prints, for one run:

* poll wall time with 1, 3 and 6 clusters UP (median of three polls each);
* a 5 s job: set RUNNING -> job RUNNING and -> SUCCEEDED through SkyDeck's own loop
  (reconcile on the change, then polls at SKYDECK_POLL_ACTIVE_INTERVAL), beside a raw
  ``sky launch`` of the same task in the same run, and the ratio;
* a restart by ``exec`` on the UP cluster (within its idle window) against a relaunch
  after a teardown;
* bytes fetched per refresh of the log copy of a job that printed 10,000 lines.

SkyDeck's loop runs in this process (the same functions the Celery tasks run), on a
throwaway SQLite database under a temporary folder; SkyPilot is the real API server
the Slurm cluster's setup started.
"""

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLURM = Path(os.environ.get("SKYDECK_SLURM_DIR", "/tmp/skydeck-slurm"))
os.environ["HOME"] = str(SLURM / "client-home")
os.environ.setdefault("SKYPILOT_API_SERVER_LOCAL_PORT", "46690")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
os.environ["SKYDECK_VAR_DIR"] = tempfile.mkdtemp(prefix="skydeck-bench-sky-")
os.environ["DATABASE_URL"] = f"sqlite:///{os.environ['SKYDECK_VAR_DIR']}/bench.sqlite3"
os.environ["DJANGO_SETTINGS_MODULE"] = "skydeck_site.settings"
os.environ["SKYDECK_BACKOFF_BASE"] = "0"
os.environ["CELERY_BROKER_URL"] = "memory://"  # nothing is sent: the loop runs here

PREFIX = "sd-bench-"


def setup_django():
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


class Loop:
    """SkyDeck's control loop in a thread: polls at the active cadence and reconciles what they change."""

    def __init__(self):
        from django.conf import settings

        self.interval = settings.SKYDECK_POLL_ACTIVE_INTERVAL
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        from django.db import connection

        from experiments.tasks import PollInProgress, run_log_sync, run_poll

        try:
            while not self.stop.wait(self.interval):
                for step in (run_poll, run_log_sync):
                    with contextlib.suppress(PollInProgress):
                        step()
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=120)


def experiment(name, command):
    from experiments.models import Experiment

    Experiment.objects.filter(name=name).delete()
    return Experiment.objects.create(
        name=name, command=command, backend="skypilot", infra="slurm", cpus="1", memory="1", autostop_minutes=30
    )


def wait(predicate, timeout=600, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("timed out")


def job_status(exp, attempt=None):
    from experiments.models import Job

    jobs = Job.objects.filter(experiment=exp)
    job = jobs.filter(attempt=attempt).first() if attempt else jobs.order_by("-attempt").first()
    return job.status if job else None


def set_running(exp):
    from experiments import intent, reconciler

    intent.set_desired_state(intent.Actor.system("cli"), exp, "RUNNING")
    reconciler.reconcile(exp.pk, follow_up=False)  # what the worker does on commit


def restart(exp):
    from experiments import intent, reconciler

    intent.restart(intent.Actor.system("cli"), exp)
    reconciler.reconcile(exp.pk, follow_up=False)


def terminate(experiments):
    from experiments import intent, reconciler
    from experiments.models import Experiment

    intent.set_desired_state_many(intent.Actor.system("cli"), experiments, "TERMINATED")
    for exp in experiments:
        reconciler.reconcile(exp.pk, follow_up=False)
    wait(lambda: all(Experiment.objects.get(pk=e.pk).phase == "TERMINATED" for e in experiments), timeout=900)


def poll_seconds(samples=3):
    from experiments.observe import poll_all

    times = []
    for _ in range(samples):
        started = time.monotonic()
        poll_all(["skypilot"])
        times.append(time.monotonic() - started)
    return statistics.median(times)


def bench_poll_scale(rows):
    busy = "for i in $(seq 1 600); do echo tick $i; sleep 1; done"
    experiments = [experiment(f"{PREFIX}poll-{i}", busy) for i in range(6)]
    with Loop():
        for count in (1, 3, 6):
            for exp in experiments[:count]:
                if job_status(exp) is None:
                    set_running(exp)
            wait(lambda count=count: all(job_status(e) == "RUNNING" for e in experiments[:count]), timeout=900)
            seconds = poll_seconds()
            rows.append(("Poll wall time", f"{count} cluster{'s' if count > 1 else ''} UP", f"{seconds:.1f} s"))
            print(rows[-1], flush=True)
        terminate(experiments)


def raw_launch(command):
    """A plain ``sky launch`` of the same task, then its queue until the job runs and ends."""
    import sky

    name = f"{PREFIX}raw"
    task = sky.Task(name=f"{name}-1", run=command)
    task.set_resources(sky.Resources(infra="slurm", cpus="1", memory="1"))
    started = time.monotonic()
    job_id, _ = sky.get(sky.launch(task, cluster_name=name))
    running = succeeded = None
    while succeeded is None:
        status = next(str(r["status"]) for r in sky.get(sky.queue(name)) if r["job_id"] == job_id)
        now = time.monotonic() - started
        if running is None and ("RUNNING" in status or "SUCCEEDED" in status):
            running = now
        if "SUCCEEDED" in status:
            succeeded = now
        time.sleep(0.5)
    sky.get(sky.down(name))
    return running, succeeded


def bench_short_job(rows):
    command = "echo short; sleep 5; echo done"
    raw_running, raw_succeeded = raw_launch(command)
    exp = experiment(f"{PREFIX}short", command)
    with Loop():
        started = time.monotonic()
        set_running(exp)
        running = wait(lambda: job_status(exp) in ("RUNNING", "SUCCEEDED")) - started
        succeeded = wait(lambda: job_status(exp) == "SUCCEEDED") - started
        for what, raw, ours in (("job RUNNING", raw_running, running), ("SUCCEEDED", raw_succeeded, succeeded)):
            rows.append(
                (
                    f"5 s job, set RUNNING → {what}",
                    f"raw sky launch {raw:.1f} s",
                    f"SkyDeck {ours:.1f} s ({ours / raw:.2f}×)",
                )
            )
        print(rows[-2:], flush=True)

        # Restart within the idle window: the cluster is UP, so the job is exec'd onto it.
        started = time.monotonic()
        restart(exp)
        attempt = 2
        exec_running = wait(lambda: job_status(exp, attempt) in ("RUNNING", "SUCCEEDED")) - started
        wait(lambda: job_status(exp, attempt) == "SUCCEEDED")
        # After a teardown, the same restart has to launch a new cluster.
        terminate([exp])
        started = time.monotonic()
        restart(exp)
        relaunch_running = wait(lambda: job_status(exp, 3) in ("RUNNING", "SUCCEEDED")) - started
        rows.append(
            (
                "Restart → job RUNNING",
                f"exec on the UP cluster {exec_running:.1f} s",
                f"relaunch {relaunch_running:.1f} s",
            )
        )
        print(rows[-1], flush=True)
        wait(lambda: job_status(exp, 3) == "SUCCEEDED")
        terminate([exp])


def bench_log_refresh(rows):
    from clusters.backends import get_backend
    from experiments.models import Job

    command = (
        'for i in $(seq 1 10000); do echo "line $i of the first burst"; done; '
        "for i in $(seq 1 60); do echo more $i; sleep 1; done"
    )
    exp = experiment(f"{PREFIX}log", command)
    backend = get_backend("skypilot")
    with Loop():
        set_running(exp)
        wait(lambda: job_status(exp) == "RUNNING")
        job = Job.objects.get(experiment=exp)
        path = Path(job.log_path)
        path.unlink(missing_ok=True)
        time.sleep(3)
        first = backend.sync_log(job.cluster_name, job.sky_job_id, str(path))
        sizes = []
        for _ in range(5):
            time.sleep(5)
            sizes.append(backend.sync_log(job.cluster_name, job.sky_job_id, str(path)))
        total = path.stat().st_size
        full = io.StringIO()
        import sky

        sky.tail_logs(job.cluster_name, job.sky_job_id, follow=False, output_stream=full)
        rows.append(
            (
                "Log copy, first refresh (10,000 lines)",
                f"{first.fetched:,} bytes fetched",
                f"copy {first.added:,} bytes",
            )
        )
        whole = len(full.getvalue().encode())
        rows.append(
            (
                "Log copy, each later refresh (5 s of output)",
                f"{statistics.median(s.fetched for s in sizes):,.0f} bytes fetched (median)",
                f"{statistics.median(s.added for s in sizes):,.0f} bytes new; a whole-log fetch is {whole:,} bytes",
            )
        )
        print(rows[-2:], f"copy now {total:,} bytes", flush=True)
        terminate([exp])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", help="Write the table to this Markdown file")
    args = parser.parse_args()
    setup_django()
    rows = []
    try:
        bench_poll_scale(rows)
        bench_short_job(rows)
        bench_log_refresh(rows)
    finally:
        from clusters.backends import get_backend

        for cluster in get_backend("skypilot").list_clusters():
            if cluster.name.startswith((PREFIX, "sd-" + PREFIX)):
                get_backend("skypilot").down(cluster.name)
    table = ["| What | | |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows]]
    print("\n".join(table))
    if args.write:
        Path(args.write).write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
