"""Time SkyDeck's busiest pages with 10,000 experiments and 200,000 jobs, on PostgreSQL or SQLite.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/skydeck_bench \\
        .venv/bin/python bench/pages.py [--write docs/benchmark.md]
    DATABASE_URL=sqlite:////tmp/skydeck-bench.sqlite3 .venv/bin/python bench/pages.py

The database named in DATABASE_URL is created if missing, migrated and filled
once (a second run reuses the data). Requests go through Django's full stack
in process (middleware, session, queries, templates), so the numbers are
server time without the network. Not part of CI.
"""

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/skydeck_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")

EXPERIMENTS = 10_000
JOBS_PER_EXPERIMENT = 20
REPEAT = 60


def ensure_database(url):
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def fill():
    from django.db import transaction
    from django.utils import timezone

    from experiments.models import Experiment, Job

    if Experiment.objects.count() == EXPERIMENTS and Job.objects.count() == EXPERIMENTS * JOBS_PER_EXPERIMENT:
        print("reusing the data already there")
        return
    print(f"filling {EXPERIMENTS:,} experiments and {EXPERIMENTS * JOBS_PER_EXPERIMENT:,} jobs …", flush=True)
    rng = random.Random(7)
    now = timezone.now()
    phases = ["SUCCEEDED", "FAILED", "RUNNING", "STOPPED", "TERMINATED", "PENDING", "BACKOFF"]
    with transaction.atomic():
        Job.objects.all().delete()
        Experiment.objects.all().delete()
        batch = []
        for i in range(EXPERIMENTS):
            desired = rng.choice(["RUNNING", "RUNNING", "STOPPED", "TERMINATED"])
            batch.append(
                Experiment(
                    name=f"exp-{i:05d}",
                    description=f"benchmark experiment {i}",
                    command="python train.py",
                    flags={
                        "trainer.lr": rng.choice([1e-3, 3e-4, 1e-4]),
                        "trainer.seed": i % 5,
                        "model.depth": rng.choice([12, 24]),
                        "data.name": rng.choice(["c4", "pile"]),
                        "trainer.amp": rng.random() < 0.5,
                    },
                    tags=[rng.choice(["grid", "baseline", "ablation"]), f"week-{i % 10}"],
                    backend=rng.choice(["local", "skypilot"]),
                    accelerators=rng.choice(["", "H100:8", "A100:1"]),
                    infra=rng.choice(["", "aws/us-east-1", "slurm"]),
                    use_spot=rng.random() < 0.3,
                    desired_state=desired,
                    phase=rng.choice(phases),
                    status_reason="Benchmark",
                    starred=rng.random() < 0.05,
                    created_at=now - timedelta(minutes=i),
                )
            )
        Experiment.objects.bulk_create(batch, batch_size=2000)
        ids = list(Experiment.objects.values_list("id", "name"))
        jobs = []
        for pk, name in ids:
            for attempt in range(1, JOBS_PER_EXPERIMENT + 1):
                started = now - timedelta(hours=JOBS_PER_EXPERIMENT - attempt + 1)
                jobs.append(
                    Job(
                        experiment_id=pk,
                        attempt=attempt,
                        generation=1,
                        backend="local",
                        name=f"sd-{name}-{attempt}",
                        command="python train.py",
                        cluster_name=f"sd-{name}",
                        sky_job_id=attempt,
                        status="FAILED"
                        if attempt < JOBS_PER_EXPERIMENT
                        else rng.choice(["SUCCEEDED", "FAILED", "CANCELLED"]),
                        started_at=started,
                        ended_at=started + timedelta(minutes=40),
                        exit_code=1,
                        failure_kind="user",
                        error_message="exit code 1",
                    )
                )
            if len(jobs) >= 20_000:
                Job.objects.bulk_create(jobs)
                jobs = []
        Job.objects.bulk_create(jobs)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def token_of(response):
    import re

    return re.search(r'name="token"[^>]*value="([0-9a-f]+)"', response.content.decode()).group(1)


def measure(client, url, headers=None, expect=200, cold=False):
    """Median and p95 in ms; ``cold``: with the kept rows dropped before each request (every row drawn)."""
    from django.core.cache import caches

    if callable(url):  # a change token, read afresh (ages tick each minute)
        url = url()
    for _ in range(5):
        response = client.get(url, headers=headers or {})
        assert response.status_code == expect, (url, response.status_code)
    times = []
    for _ in range(REPEAT):
        if cold:
            caches["rows"].clear()
        start = time.perf_counter()
        response = client.get(url, headers=headers or {})
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == expect
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def count_queries(client, url, headers=None):
    """The queries of one request (the session's and the user's included)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if callable(url):
        url = url()
    with CaptureQueriesContext(connection) as captured:
        client.get(url, headers=headers or {})
    return len(captured.captured_queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", help="write the results as Markdown to this file")
    args = parser.parse_args()
    postgres = os.environ["DATABASE_URL"].startswith(("postgres://", "postgresql://"))
    if postgres:
        ensure_database(os.environ["DATABASE_URL"])

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    fill()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    client = Client()
    client.force_login(user)
    hx = {"HX-Request": "true"}
    detail = "/experiments/exp-04242/"

    def unchanged_list():
        return f"/?per_page=50&token={token_of(client.get('/?per_page=50', headers=hx))}"

    def unchanged_detail():
        return f"{detail}?part=live&token={token_of(client.get(detail + '?part=live', headers=hx))}"

    cases = [
        ("Experiments list (50 rows of 10,000)", "/", None, 200),
        ("Experiments list, every row drawn (none kept)", "/", None, 200, True),
        ("Filtered list (search + desired + tag + sort)", "/?q=exp-01&desired=RUNNING&tag=grid&sort=name", None, 200),
        ("Polled table fragment, changed (rendered)", "/?per_page=50&token=stale", hx, 200),
        ("Polled table fragment, unchanged (204)", unchanged_list, hx, 204),
        ("Experiment detail (20 jobs)", detail, None, 200),
        ("Experiment detail, every row drawn (none kept)", detail, None, 200, True),
        ("Detail live fragment, unchanged (204)", unchanged_detail, hx, 204),
        ("API: GET /api/experiments (50 of 10,000)", "/api/experiments?limit=50", None, 200),
        ("API: GET /api/experiments filtered", "/api/experiments?desired=RUNNING&tag=grid&limit=50", None, 200),
    ]
    rows = []
    for label, url, headers, expect, *cold in cases:
        median, p95 = measure(client, url, headers, expect, cold=bool(cold))
        queries = count_queries(client, url, headers)
        rows.append((label, median, p95, queries))
        print(f"{label:<50} median {median:6.1f} ms   p95 {p95:6.1f} ms   {queries} queries", flush=True)
    if args.write:
        from django.db import connection

        if postgres:
            version = connection.cursor().connection.info.server_version
            engine = f"PostgreSQL {version // 10000}.{version % 10000}"
        else:
            import sqlite3

            engine = f"SQLite {sqlite3.sqlite_version}"
        lines = [
            "# Page benchmark",
            "",
            f"`make bench` (bench/pages.py): {engine}, "
            f"{EXPERIMENTS:,} experiments, "
            f"{EXPERIMENTS * JOBS_PER_EXPERIMENT:,} jobs; each page requested {REPEAT} times after 5 warm-ups through "
            "Django's full stack in process (session, middleware, queries, templates; no network).",
            "",
            "| Page | Median | p95 | Queries |",
            "|---|---:|---:|---:|",
            *[f"| {label} | {median:.1f} ms | {p95:.1f} ms | {queries} |" for label, median, p95, queries in rows],
            "",
            "Target: every page under 50 ms median.",
            "",
        ]
        Path(args.write).write_text("\n".join(lines))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
