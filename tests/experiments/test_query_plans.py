"""Every list, filter, detail page and API list reads experiments, jobs and events through an index.

PostgreSQL only (SQLite plans differ and are not what production runs). The planner is told
to avoid sequential scans (enable_seqscan = off); it still picks one where no index can serve
the query, which is exactly what these tests look for in EXPLAIN's answer.
"""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from experiments.models import Event
from tests.factories import ExperimentFactory, JobFactory, UserFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans are checked on PostgreSQL"),
]

WATCHED = re.compile(r"Seq Scan on (experiments_experiment|experiments_job|experiments_event)\b")


def scans(response_of):
    """The sequential scans on the watched tables among the SELECTs ``response_of()`` makes."""
    with CaptureQueriesContext(connection) as captured:
        response = response_of()
    assert response.status_code in (200, 204), response.status_code
    found = []
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            for query in captured.captured_queries:
                sql = query["sql"]
                if not sql.lstrip().upper().startswith("SELECT") or "experiments_" not in sql:
                    continue
                cursor.execute("EXPLAIN " + sql)
                plan = "\n".join(row[0] for row in cursor.fetchall())
                if WATCHED.search(plan):
                    found.append(f"{sql}\n{plan}")
        finally:
            cursor.execute("SET enable_seqscan = on")
    return found


@pytest.fixture
def data(db):
    owner = UserFactory()
    experiments = [
        ExperimentFactory(owner=owner, tags=["grid", f"week-{i % 3}"], starred=i % 4 == 0) for i in range(12)
    ]
    for experiment in experiments[:6]:
        for attempt in range(1, 4):
            job = JobFactory(experiment=experiment, attempt=attempt, status="SUCCEEDED")
            Event.objects.create(experiment=experiment, job=job, kind=Event.Kind.JOB, message="done")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return owner, experiments


LIST_QUERIES = [
    {},
    {"who": "all"},
    {"q": "train"},
    {"state": "RUNNING"},
    {"desired": "STOPPED"},
    {"backend": "local"},
    {"tag": "grid"},
    {"starred": "on"},
    {"sweep": "nothing"},
    {"page": "2"},
    *({"sort": sort, "who": "all"} for sort in ("created", "name", "-name", "-updated", "state", "desired", "backend")),
]


@pytest.mark.parametrize("params", LIST_QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()) or "plain")
def test_list_page_and_its_filters_use_indexes(client, data, params):
    owner, _ = data
    client.force_login(owner)
    assert scans(lambda: client.get(reverse("experiments:list"), params)) == []


@pytest.mark.parametrize("params", LIST_QUERIES, ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()) or "plain")
def test_api_list_and_its_filters_use_indexes(client, data, params):
    owner, _ = data
    client.force_login(owner)
    assert scans(lambda: client.get("/api/experiments", params)) == []


def test_detail_page_its_fragment_and_the_api_detail_use_indexes(client, data):
    owner, experiments = data
    client.force_login(owner)
    experiment = experiments[0]
    url = reverse("experiments:detail", args=[experiment.name])
    assert scans(lambda: client.get(url)) == []
    assert scans(lambda: client.get(url, headers={"HX-Request": "true"})) == []
    assert scans(lambda: client.get(f"/api/experiments/{experiment.pk}")) == []
    assert scans(lambda: client.get(f"/api/experiments/{experiment.pk}/jobs")) == []
    assert scans(lambda: client.get(reverse("experiments:job_detail", args=[experiment.name, 2]))) == []
