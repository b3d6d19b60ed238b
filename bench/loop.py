"""Time the control loop's quiet passes: a reconcile pass and a poll pass with N running local jobs.

    .venv/bin/python bench/loop.py [--sizes 100,300,1000] [--database sqlite|postgres]

N experiments are set RUNNING with ``sleep`` commands on the local backend and
reconciled until every job runs (real processes, one per job); then, with nothing
changing, each pass is run several times and its median time, its queries and
its writes are printed. Everything it started is torn down at the end. The
database is a fresh SQLite file in a temporary folder, or the PostgreSQL
database named in DATABASE_URL (default ``skydeck_bench_loop``, emptied first).
Not part of CI.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

REPEAT = 5


def setup(database):
    var = Path(tempfile.mkdtemp(prefix="skydeck-bench-loop-"))
    os.environ["SKYDECK_VAR_DIR"] = str(var)
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "skydeck_site.settings"
    os.environ["SKYDECK_BACKENDS"] = "local"
    if database == "postgres":
        from pages import ensure_database

        os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/skydeck_bench_loop")
        ensure_database(os.environ["DATABASE_URL"])
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{var / 'bench.sqlite3'}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return var


def empty():
    from clusters.models import Cluster
    from experiments.models import Event, Experiment, Job

    Event.objects.all().delete()
    Job.objects.all().delete()
    Experiment.objects.all().delete()
    Cluster.objects.all().delete()


def start(n, owner):
    """N experiments RUNNING, reconciled (and polled) until every job runs."""
    from experiments import intent
    from experiments.models import Experiment, Job
    from experiments.reconciler import reconcile_all
    from experiments.tasks import run_poll

    actor = intent.Actor(owner)
    with intent.batched():
        for i in range(n):
            experiment = Experiment(name=f"loop-{i:04d}", command="sleep 3600", backend="local")
            intent.create(actor, experiment, desired_state="RUNNING")
    started = time.monotonic()
    while Job.objects.filter(status="RUNNING").count() < n:
        reconcile_all()
        run_poll()
        if time.monotonic() - started > 60 + n:
            sys.exit(f"only {Job.objects.filter(status='RUNNING').count()} of {n} jobs run")
    # Let the first quiet passes record what they saw (the first one after a launch settles it).
    for _ in range(2):
        run_poll()
        reconcile_all()
    assert Experiment.objects.filter(phase="RUNNING").count() == n
    return time.monotonic() - started


def timed(function):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, queries, writes = [], [], []
    for _ in range(REPEAT):
        with CaptureQueriesContext(connection) as captured:
            begun = time.perf_counter()
            function()
            times.append(time.perf_counter() - begun)
        sql = [q["sql"].lstrip().upper() for q in captured.captured_queries]
        queries.append(len(sql))
        writes.append(sum(1 for s in sql if s.startswith(("UPDATE", "INSERT", "DELETE"))))
    return statistics.median(times), statistics.median(queries), statistics.median(writes)


def stop_all():
    from clusters.backends import get_backend

    backend = get_backend("local")
    for cluster in backend.list_clusters():
        backend.down(cluster.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    setup(args.database)

    from django.contrib.auth import get_user_model
    from django.db import connection

    from experiments.models import Experiment
    from experiments.reconciler import reconcile_all
    from experiments.tasks import run_poll

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    print(f"database: {connection.vendor}")
    rows = []
    try:
        for n in (int(size) for size in args.sizes.split(",")):
            empty()
            launch = start(n, owner)
            before = Experiment.objects.filter(phase="RUNNING").count()
            reconcile = timed(reconcile_all)
            poll = timed(run_poll)
            assert Experiment.objects.filter(phase="RUNNING").count() == before == n
            rows.append((n, launch, reconcile, poll))
            print(
                f"{n:>5} running (launched in {launch:5.1f} s) | reconcile pass {reconcile[0] * 1000:7.1f} ms, "
                f"{reconcile[1]:.0f} queries, {reconcile[2]:.0f} writes | poll pass {poll[0] * 1000:7.1f} ms, "
                f"{poll[1]:.0f} queries, {poll[2]:.0f} writes",
                flush=True,
            )
            stop_all()
    finally:
        stop_all()
    print()
    print(f"| Running jobs | Reconcile pass ({connection.vendor}) | Queries | Writes | Poll pass | Queries | Writes |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, _, (rt, rq, rw), (pt, pq, pw) in rows:
        print(f"| {n:,} | {rt * 1000:.0f} ms | {rq:.0f} | {rw:.0f} | {pt * 1000:.0f} ms | {pq:.0f} | {pw:.0f} |")


if __name__ == "__main__":
    main()
