"""Time the metrics: the parser's throughput, a job's output read and stored, and the endpoints for 100,000 points.

    .venv/bin/python bench/metrics.py [--database-url postgres://postgres@127.0.0.1:5432/skydeck_bench_metrics]

Without --database-url it runs on a fresh SQLite file in a temporary folder (the
default install). The database is migrated; its metric tables are emptied first.
Requests go through Django's full stack in process (middleware, token or session,
queries, JSON), so the times are server time without the network. Not part of CI.
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINES = 200_000  # for the parser alone
STEPS = 10_000  # lines of the job's output with metrics ...
METRICS = 10  # ... each with this many: 100,000 points
REPEAT = 20


def setup(database_url):
    scratch = Path(tempfile.mkdtemp(prefix="skydeck-bench-metrics-"))
    os.environ.setdefault("SKYDECK_VAR_DIR", str(scratch / "var"))
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{scratch / 'bench.sqlite3'}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skydeck_site.settings")
    os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    if os.environ["DATABASE_URL"].startswith("postgres"):
        ensure_database(os.environ["DATABASE_URL"])
    call_command("migrate", verbosity=0, interactive=False)
    return scratch


def ensure_database(url):
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def sample_lines(n):
    """Output as a training script prints it: half metric lines of the three forms, half other text."""
    rng = random.Random(7)
    lines = []
    for i in range(n):
        kind = i % 8
        if kind in (0, 1):
            lines.append("SKYDECK " + json.dumps({"step": i, "loss": rng.random(), "acc": rng.random(), "lr": 3e-4}))
        elif kind == 2:
            lines.append(f"step={i} loss={rng.random():.5f} grad_norm={rng.random() * 3:.4f}")
        elif kind == 3:
            lines.append(f"(sd-bench-1, pid=4242) step={i}, loss={rng.random():.5f} | acc={rng.random():.4f}")
        elif kind == 4:
            lines.append(f"Epoch {i}: train loss 0.{rng.randrange(10**6):06d} took 1.3s")
        else:
            lines.append(f"[{i:07d}] INFO data loader: fetched batch of 512 samples from shard {i % 97}")
    return lines


def time_parser(lines, pattern=None):
    from experiments.metrics import LineParser

    parser = LineParser(pattern)
    started = time.perf_counter()
    found = sum(1 for line in lines if parser.parse(line) is not None)
    return len(lines) / (time.perf_counter() - started), found


def median_ms(call, repeat=REPEAT):
    call()  # warm
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    args = parser.parse_args()
    setup(args.database_url)

    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from experiments import logs, metrics
    from experiments.metric_models import MetricCursor, MetricPoint, MetricSeries
    from experiments.models import ApiToken, Experiment, Job

    print(f"database: {connection.vendor}; SkyDeck metrics benchmark\n")

    lines = sample_lines(LINES)
    print(f"parser alone, {LINES:,} lines (half metric lines: JSON, key=value, SkyPilot-prefixed):")
    rate, found = time_parser(lines)
    print(f"  built-in formats        {rate:12,.0f} lines/s  ({found:,} metric lines)")
    rate, found = time_parser(lines, r"Epoch (?P<step>\d+): train loss (?P<loss>[0-9.]+)")
    print(f"  with a metric pattern   {rate:12,.0f} lines/s  ({found:,} metric lines)")

    # A job whose output holds 100,000 points: 10,000 metric lines of 10 metrics, with other text between.
    MetricPoint.objects.all().delete()
    MetricSeries.objects.all().delete()
    MetricCursor.objects.all().delete()
    Experiment.objects.filter(name="bench-metrics").delete()
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
    experiment = Experiment.objects.create(name="bench-metrics", command="python train.py", backend="local", owner=user)
    job = Job.objects.create(
        experiment=experiment,
        attempt=1,
        generation=1,
        backend="local",
        name="sd-bench-metrics-1",
        command="python train.py",
        status="SUCCEEDED",
        log_complete=True,
    )
    job.log_path = logs.path_for(job)
    job.save(update_fields=["log_path"])
    path = Path(job.log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    with open(path, "w") as fh:
        for step in range(1, STEPS + 1):
            values = {f"metric_{k}": round(rng.random(), 6) for k in range(METRICS)}
            fh.write("SKYDECK " + json.dumps({"step": step, **values}) + "\n")
            fh.write(f"step {step}/{STEPS} took 0.01s\n")
    size = path.stat().st_size
    started = time.perf_counter()
    parsed = metrics.parse_job(job, budget=size + 1)
    took = time.perf_counter() - started
    stored = MetricPoint.objects.filter(job=job).count()
    assert stored == STEPS * METRICS, stored
    print(f"\na job's output read and stored ({parsed.lines:,} lines, {size / 1e6:.1f} MB, {stored:,} points):")
    print(
        f"  read, parsed and stored {parsed.lines / took:12,.0f} lines/s  ({stored / took:,.0f} points/s, {took:.2f} s)"
    )

    api = Client()
    token = ApiToken.issue(user)[1]
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    web = Client()
    web.force_login(user)
    full = api.get(f"/api/jobs/{job.pk}/metrics", **headers)
    assert full.status_code == 200, full.content[:300]
    cursor = full.json()["cursor"]
    print(f"\nthe endpoints for that job ({stored:,} points, {len(full.content) / 1e6:.1f} MB of JSON), median / p95:")
    rows = [
        ("GET /api/jobs/{id}/metrics (all points)", lambda: api.get(f"/api/jobs/{job.pk}/metrics", **headers)),
        (
            "GET /api/jobs/{id}/metrics?names=one",
            lambda: api.get(f"/api/jobs/{job.pk}/metrics?names=metric_0", **headers),
        ),
        (
            "GET /api/jobs/{id}/metrics?since=cursor",
            lambda: api.get(f"/api/jobs/{job.pk}/metrics?since={cursor}", **headers),
        ),
        ("GET the charts' JSON (all points)", lambda: web.get(f"/experiments/{experiment.name}/metrics.json")),
    ]
    for label, call in rows:
        if call().status_code != 200:  # the charts' URL is not in the site's URLs yet
            print(f"  {label:42} not served by this site")
            continue
        median, p95 = median_ms(call, repeat=REPEAT if "since" in label or "names" in label else 10)
        print(f"  {label:42} {median:8.1f} ms {p95:8.1f} ms")
    print(f"\n(series limit SKYDECK_METRIC_MAX_POINTS={getattr(settings, 'SKYDECK_METRIC_MAX_POINTS', 10_000):,})")


if __name__ == "__main__":
    main()
