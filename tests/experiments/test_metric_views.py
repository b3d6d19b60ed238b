"""The metrics pages and endpoints: the charts' JSON, the sweep comparison, the pattern form, the API, /metrics.

Run against the site's URLs; where the site does not include the metrics URLs yet, this
module's own URLconf adds them in front (the same include the site gets).
"""

import sys

import pytest
from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import include, path

from clusters.models import BackendHealth, Heartbeat
from experiments import metrics, sweeps
from experiments.metric_models import MetricCursor, MetricPattern, MetricPoint, MetricSeries
from experiments.models import ApiToken, Experiment, Sweep
from experiments.tasks import run_poll, run_reconcile_all
from skydeck_site import prometheus
from skydeck_site import urls as site_urls
from tests.factories import ClusterFactory, ExperimentFactory, JobFactory, SweepFactory, UserFactory
from tests.support import ROOT, actor, wait_for


def _urlpatterns():
    wired = {getattr(p, "namespace", None) for p in site_urls.urlpatterns}
    extra = [] if "metrics" in wired else [path("", include("experiments.metric_urls"))]
    if not any(str(p.pattern) == "metrics" for p in site_urls.urlpatterns):
        extra.append(path("metrics", prometheus.metrics, name="prometheus"))
    return extra + list(site_urls.urlpatterns)


urlpatterns = _urlpatterns()
handler500 = site_urls.handler500
pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

TRAIN = f"{sys.executable} {ROOT / 'examples' / 'train.py'}"
HTMX = {"HTTP_HX_REQUEST": "true"}


def add_points(job, name, values, first_step=1):
    MetricPoint.objects.bulk_create(
        MetricPoint(job=job, name=name, step=first_step + i, value=v, time=job.created_at) for i, v in enumerate(values)
    )
    return MetricSeries.objects.create(
        job=job,
        experiment=job.experiment,
        attempt=job.attempt,
        name=name,
        points=len(values),
        first_step=first_step,
        last_step=first_step + len(values) - 1,
        last_value=values[-1],
        min_value=min(values),
        max_value=max(values),
    )


@pytest.fixture
def experiment_with_points():
    exp = ExperimentFactory(name="curves")
    one = JobFactory(experiment=exp, attempt=1, status="FAILED")
    two = JobFactory(experiment=exp, attempt=2, status="RUNNING")
    add_points(one, "loss", [2.0, 1.5, 1.2])
    add_points(two, "loss", [1.1, 0.9], first_step=4)
    add_points(two, "acc", [0.5, 0.6], first_step=4)
    return exp, one, two


# --- who may look --------------------------------------------------------------------------------


def test_everything_needs_a_login_and_the_pattern_form_a_post(owner_client, experiment_with_points):
    client = Client()  # anonymous, beside the owner's
    SweepFactory(name="sw")
    for url in ("/experiments/curves/metrics.json", "/sweeps/sw/metrics/"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    response = client.post("/experiments/curves/metrics/pattern/", {"pattern": r"loss (?P<loss>\d+)"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert owner_client.get("/experiments/curves/metrics/pattern/").status_code == 405
    assert client.get("/api/jobs/1/metrics").status_code == 401
    assert client.get("/api/experiments/curves/metrics").status_code == 401


# --- the charts' JSON ------------------------------------------------------------------------------


def test_the_charts_read_every_attempt_then_only_what_is_new(owner_client, experiment_with_points):
    exp, one, two = experiment_with_points
    data = owner_client.get("/experiments/curves/metrics.json").json()
    assert data["names"] == ["acc", "loss"] and data["live"] is True
    assert [a["attempt"] for a in data["attempts"]] == [1, 2]
    got = {(s["attempt"], s["name"]): (s["steps"], s["values"]) for s in data["series"]}
    assert got[(1, "loss")] == ([1, 2, 3], [2.0, 1.5, 1.2]) and got[(2, "loss")] == ([4, 5], [1.1, 0.9])
    MetricPoint.objects.create(job=two, name="loss", step=6, value=0.7, time=two.created_at)
    newer = owner_client.get(f"/experiments/curves/metrics.json?since={data['cursor']}").json()
    assert [(s["attempt"], s["name"], s["steps"]) for s in newer["series"] if s["steps"]] == [(2, "loss", [6])]
    assert newer["cursor"] > data["cursor"]
    assert owner_client.get("/experiments/curves/metrics.json?since=junk").status_code == 200
    assert owner_client.get("/experiments/nope/metrics.json").status_code == 404


def test_the_charts_json_takes_a_fixed_number_of_queries(
    owner_client, experiment_with_points, django_assert_max_num_queries
):
    exp, one, two = experiment_with_points
    owner_client.get("/experiments/curves/metrics.json")  # the session, once
    with django_assert_max_num_queries(8) as few:
        owner_client.get("/experiments/curves/metrics.json")
    for attempt in range(3, 8):
        job = JobFactory(experiment=exp, attempt=attempt, status="SUCCEEDED")
        add_points(job, "loss", [float(i) for i in range(200)])
        add_points(job, f"m{attempt}", [1.0, 2.0])
    with django_assert_max_num_queries(len(few.captured_queries)):
        owner_client.get("/experiments/curves/metrics.json")


# --- the pattern form --------------------------------------------------------------------------------


def test_the_owner_sets_a_pattern_and_another_user_may_not(client, owner, other_user, experiment_with_points):
    exp, _, _ = experiment_with_points
    exp.jobs.update(log_path="/nowhere/output.log")
    client.force_login(owner)
    response = client.post("/experiments/curves/metrics/pattern/", {"pattern": r"loss (?P<loss>[0-9.]+)"}, follow=True)
    assert MetricPattern.objects.get(experiment__name="curves").pattern == r"loss (?P<loss>[0-9.]+)"
    assert "Metric pattern saved" in response.content.decode()
    assert MetricCursor.objects.filter(job__experiment__name="curves", offset=0, complete=False).count() == 2
    response = client.post("/experiments/curves/metrics/pattern/", {"pattern": "(?P<loss>"}, follow=True)
    assert "Metric pattern not saved" in response.content.decode()
    client.force_login(other_user)
    response = client.post("/experiments/curves/metrics/pattern/", {"pattern": ""}, follow=True)
    assert "You may not change curves" in response.content.decode()
    assert MetricPattern.objects.filter(experiment__name="curves").exists()


def test_the_charts_partial_renders_with_the_pattern_form_for_who_may_change(experiment_with_points, owner):
    exp, _, _ = experiment_with_points
    MetricPattern.objects.create(experiment=exp, pattern=r"loss (?P<loss>\d+)")
    template = Template('{% include "experiments/metrics.html#experiment_charts" %}')
    request = RequestFactory().get("/")
    request.user = owner
    html = template.render(Context({"experiment": exp, "may_change": True, "request": request}))
    assert 'data-metrics-url="/experiments/curves/metrics.json"' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "js/metrics.js" in html
    assert 'value="loss (?P&lt;loss&gt;\\d+)"' in html and "Save pattern" in html
    html = template.render(Context({"experiment": exp, "may_change": False}))
    assert "Save pattern" not in html and "loss (?P&lt;loss&gt;\\d+)" in html


# --- a sweep compared by a metric --------------------------------------------------------------------


def drive_until(predicate, timeout=90, message="state"):
    def step():
        run_poll()
        run_reconcile_all()
        metrics.parse_all()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.2, message=message)


LRS = [0.0001, 0.001, 0.003, 0.01, 0.1, 1.0]


def test_a_sweep_of_six_real_jobs_shows_which_learning_rate_won(owner_client, owner, local_root):
    base = ExperimentFactory(name="lr-base", command=TRAIN, flags={"steps": 5, "step_seconds": 0, "lr": 0.001})
    sweep = sweeps.create_sweep(
        actor(owner), name="lr", base=base, kind="grid", parameters={"lr": LRS}, desired_state="RUNNING"
    )
    children = list(sweep.experiments.all())
    assert len(children) == 6
    drive_until(
        lambda: MetricCursor.objects.filter(job__experiment__sweep=sweep, complete=True).count() == 6,
        message="six outputs read",
    )
    response = owner_client.get("/sweeps/lr/metrics/", **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    winner = Experiment.objects.get(sweep=sweep, flags__lr=0.003)
    comparison = response.context["comparison"]
    assert comparison.metric == "loss" and comparison.goal == "min" and comparison.best == winner.name
    # Sorted best first; every child has a value; the best row is marked.
    assert [r["flags"]["lr"] for r in comparison.rows][0] == 0.003
    assert all(r["value"] is not None for r in comparison.rows)
    assert body.count('class="is-best"') == 1 and "best-badge" in body and 'id="sweep-metric-data"' in body
    assert comparison.plot["axes"] == [{"path": "lr", "kind": "number", "log": True}]

    # The poll with the token it shows: nothing changed, 204.
    token = response.context["token"]
    assert (
        owner_client.get(f"/sweeps/lr/metrics/?{comparison_query(comparison)}&token={token}", **HTMX).status_code == 204
    )
    # Accuracy, higher wins; sorted by the flag.
    response = owner_client.get("/sweeps/lr/metrics/?metric=accuracy&sort=flag:lr", **HTMX)
    comparison = response.context["comparison"]
    assert comparison.goal == "max" and comparison.best == winner.name
    assert [r["flags"]["lr"] for r in comparison.rows] == LRS
    # A plain visit goes to the sweep's page with the same choices.
    response = owner_client.get("/sweeps/lr/metrics/?metric=accuracy")
    assert response.status_code == 302 and response["Location"].startswith("/sweeps/lr/?metric=accuracy")


def comparison_query(comparison):
    return f"metric={comparison.metric}&value={comparison.value}&goal={comparison.goal}&sort={comparison.sort}"


def test_a_sweep_without_metrics_says_so_and_sorts_by_name(owner_client):
    base = ExperimentFactory(name="quiet-base")
    sweep = SweepFactory(name="quiet", base=base, parameters={"layers": [2, 4]})
    for layers in (2, 4):
        ExperimentFactory(name=f"quiet-layers{layers}", sweep=sweep, flags={"layers": layers})
    response = owner_client.get("/sweeps/quiet/metrics/", **HTMX)
    assert "No metrics yet" in response.content.decode()
    job = JobFactory(experiment=Experiment.objects.get(name="quiet-layers4"))
    add_points(job, "reward", [1.0, 3.0, 2.0])
    response = owner_client.get("/sweeps/quiet/metrics/?value=best&sort=-name", **HTMX)
    comparison = response.context["comparison"]
    assert [r["name"] for r in comparison.rows] == ["quiet-layers4", "quiet-layers2"]
    assert comparison.best == "quiet-layers4" and comparison.rows[0]["value"] == 3.0
    # Children without the metric sort last, whichever the direction.
    response = owner_client.get("/sweeps/quiet/metrics/?sort=value", **HTMX)
    assert [r["value"] for r in response.context["comparison"].rows] == [2.0, None]


def test_the_sweep_partial_loads_its_fragment_with_the_pages_choices(owner):
    sweep = SweepFactory(name="sw")
    request = RequestFactory().get("/sweeps/sw/?metric=loss")
    html = Template('{% include "experiments/metrics.html#sweep_metrics" %}').render(
        Context({"sweep": sweep, "request": request})
    )
    assert 'hx-get="/sweeps/sw/metrics/?metric=loss"' in html and 'hx-trigger="load"' in html


# --- the API ----------------------------------------------------------------------------------------


@pytest.fixture
def token(owner):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(owner)[1]}"}


def test_the_api_serves_a_jobs_series_incrementally(client, token, experiment_with_points):
    exp, one, two = experiment_with_points
    body = client.get(f"/api/jobs/{two.pk}/metrics", **token).json()
    assert body["job"] == two.pk and body["attempt"] == 2 and body["names"] == ["acc", "loss"]
    loss = next(s for s in body["series"] if s["name"] == "loss")
    assert (loss["steps"], loss["values"], loss["last_value"], loss["points"]) == ([4, 5], [1.1, 0.9], 0.9, 2)
    assert loss["times"] is None and body["complete"] is False and body["limit"] == metrics.max_points()
    timed = client.get(f"/api/jobs/{two.pk}/metrics?times=true&names=loss", **token).json()["series"][0]
    assert len(timed["times"]) == 2 and timed["times"][0] == two.created_at.timestamp()
    by_name = client.get(f"/api/jobs/{two.name}/metrics?names=acc", **token).json()
    assert [s["name"] for s in by_name["series"]] == ["acc"]
    again = client.get(f"/api/jobs/{two.pk}/metrics?since={body['cursor']}", **token).json()
    assert all(s["steps"] == [] for s in again["series"]) and again["cursor"] == body["cursor"]
    assert client.get("/api/jobs/999999/metrics", **token).status_code == 404
    assert client.get(f"/api/jobs/{two.pk}/metrics?since=-1", **token).status_code == 422


def test_the_api_serves_an_experiments_series_and_sets_its_pattern(client, token, owner, experiment_with_points):
    exp, one, two = experiment_with_points
    body = client.get("/api/experiments/curves/metrics", **token).json()
    assert body["experiment"] == "curves" and body["live"] is True and body["pattern"] == ""
    assert [(s["attempt"], s["name"]) for s in body["series"]] == [(1, "loss"), (2, "acc"), (2, "loss")]
    assert [a["attempt"] for a in body["attempts"]] == [1, 2]
    put = client.put(
        "/api/experiments/curves/metric-pattern",
        {"pattern": r"Epoch (?P<step>\d+) loss (?P<loss>[0-9.]+)"},
        content_type="application/json",
        **token,
    )
    assert put.status_code == 200 and put.json()["changed"] is True
    assert client.get(f"/api/experiments/{exp.pk}/metrics", **token).json()["pattern"].startswith("Epoch")
    bad = client.put(
        "/api/experiments/curves/metric-pattern", {"pattern": "(?P<x"}, content_type="application/json", **token
    )
    assert bad.status_code == 400 and bad.json()["field"] == "pattern"
    theirs = ExperimentFactory(name="theirs", owner=UserFactory(username="someone"))
    refused = client.put(
        f"/api/experiments/{theirs.name}/metric-pattern", {"pattern": ""}, content_type="application/json", **token
    )
    assert refused.status_code == 403


def test_the_metrics_endpoints_are_in_the_openapi_schema(client, token):
    paths = client.get("/api/openapi.json", **token).json()["paths"]
    assert {"/api/jobs/{id}/metrics", "/api/experiments/{id}/metrics", "/api/experiments/{id}/metric-pattern"} <= set(
        paths
    )
    params = {p["name"] for p in paths["/api/jobs/{id}/metrics"]["get"]["parameters"]}
    assert {"id", "since", "names"} <= params


# --- /metrics for Prometheus -------------------------------------------------------------------------


@pytest.fixture
def scrape(settings):
    settings.SKYDECK_PROMETHEUS_TOKEN = "scrape-secret"
    settings.SKYDECK_PROMETHEUS_ALLOW = []
    return {"HTTP_AUTHORIZATION": "Bearer scrape-secret"}


def test_prometheus_needs_the_token_an_allowed_address_or_staff(client, owner_client, scrape, settings):
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert owner_client.get("/metrics").status_code == 403  # a user, not staff
    assert client.get("/metrics", **scrape).status_code == 200
    settings.SKYDECK_PROMETHEUS_ALLOW = ["10.0.0.0/8", "127.0.0.1"]
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.5").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    settings.SKYDECK_PROMETHEUS_ALLOW = []
    staff = UserFactory(username="operator", is_staff=True)
    client.force_login(staff)
    assert client.get("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405


def test_prometheus_refuses_a_guesser_after_the_token_limit(client, scrape, settings):
    settings.SKYDECK_API_TOKEN_FAILURE_LIMIT = 3
    for _ in range(3):
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer guess", REMOTE_ADDR="10.9.9.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.9.9.9", **scrape).status_code == 429


def test_prometheus_says_phases_statuses_loops_backends_and_cost(client, scrape):
    from datetime import timedelta

    from django.utils import timezone

    ExperimentFactory(phase="RUNNING")
    ExperimentFactory(phase="RUNNING")
    JobFactory(status="RUNNING")
    now = timezone.now()
    Heartbeat.objects.create(name="poll", started_at=now, finished_at=now - timedelta(seconds=100), duration=1.5)
    Heartbeat.objects.create(name="reconcile", started_at=now, finished_at=now, duration=0.25)
    BackendHealth.objects.create(backend="skypilot", reachable=False, consecutive_failures=4, unreachable_since=now)
    ClusterFactory(name="sd-a", backend="skypilot", status="UP", hourly_cost=3.5)
    ClusterFactory(name="sd-b", backend="skypilot", status="UP", hourly_cost=1.0)
    ClusterFactory(name="sd-c", backend="skypilot", status="STOPPED", hourly_cost=9.0)
    response = client.get("/metrics", **scrape)
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    lines = set(text.splitlines())
    assert 'skydeck_experiments{phase="RUNNING"} 2.0' in lines and 'skydeck_experiments{phase="FAILED"} 0.0' in lines
    assert 'skydeck_jobs{status="RUNNING"} 1.0' in lines
    assert 'skydeck_loop_duration_seconds{loop="poll"} 1.5' in lines
    poll_late = next(line for line in lines if line.startswith('skydeck_loop_lateness_seconds{loop="poll"}'))
    assert 69 < float(poll_late.split()[-1]) < 80  # 100 s ago, every 30 s
    assert 'skydeck_loop_late{loop="poll"} 1.0' in lines and 'skydeck_loop_late{loop="reconcile"} 0.0' in lines
    assert 'skydeck_backend_reachable{backend="skypilot"} 0.0' in lines
    assert 'skydeck_backend_consecutive_failures{backend="skypilot"} 4.0' in lines
    assert 'skydeck_clusters_up_hourly_cost_dollars{backend="skypilot"} 4.5' in lines
    assert 'skydeck_clusters{backend="skypilot",status="STOPPED"} 1.0' in lines


def test_prometheus_takes_a_fixed_number_of_queries(client, scrape, django_assert_max_num_queries):
    for i in range(5):
        ExperimentFactory(phase="RUNNING")
        JobFactory(status="SUCCEEDED")
        ClusterFactory(name=f"sd-x{i}")
    with django_assert_max_num_queries(10):
        client.get("/metrics", **scrape)


def test_the_list_cell_partial_formats_a_value():
    template = Template('{% include "experiments/metrics.html#metric_cell" %}')
    assert ">0.12346<" in template.render(Context({"value": 0.123456789}))
    assert "—" in template.render(Context({"value": None}))


def test_the_sweep_model_is_unchanged_by_a_comparison(owner_client):
    # The comparison only reads: nothing about the sweep or its children is written.
    sweep = SweepFactory(name="ro", base=ExperimentFactory(name="ro-base"), parameters={"lr": [1, 2]})
    before = Sweep.objects.filter(pk=sweep.pk).values().get()
    owner_client.get("/sweeps/ro/metrics/", **HTMX)
    assert Sweep.objects.filter(pk=sweep.pk).values().get() == before


def test_the_vendored_chart_library_is_pinned_with_its_licence():
    vendor = ROOT / "static" / "vendor" / "uplot"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert "1.6.32" in (vendor / "README.md").read_text()
    assert (vendor / "uPlot.iife.min.js").stat().st_size > 20_000


# --- the experiments list's metric column ----------------------------------------------------------


def test_the_list_shows_a_chosen_metric_as_a_column_and_sorts_by_it(owner_client):
    for name, losses in (("lr-a", [2.0, 0.7]), ("lr-b", [1.0, 0.3]), ("lr-c", [1.5, 0.5])):
        job = JobFactory(experiment=ExperimentFactory(name=name), attempt=1, status="SUCCEEDED")
        add_points(job, "loss", losses)
    ExperimentFactory(name="no-metric")

    def names(response):
        text = response.content.decode()
        return sorted(("lr-a", "lr-b", "lr-c", "no-metric"), key=lambda n: text.index(f'class="name">{n}<'))

    page = owner_client.get("/?who=all&metric=loss&sort=metric")
    assert page.status_code == 200
    assert names(page) == ["lr-b", "lr-c", "lr-a", "no-metric"]  # those without it last
    text = page.content.decode()
    assert 'title="metric loss: the latest value"' in text and 'title="0.3">0.3<' in text
    assert '<option value="loss">' in text  # the metric names are offered
    assert names(owner_client.get("/?who=all&metric=loss&sort=-metric")) == ["lr-a", "lr-c", "lr-b", "no-metric"]
    # No metric chosen: no column, and a metric sort falls back to the newest first.
    plain = owner_client.get("/?who=all&sort=metric")
    assert "metric loss" not in plain.content.decode()
    assert names(plain) == ["no-metric", "lr-c", "lr-b", "lr-a"]
    # The API's list takes the same parameters.
    api = owner_client.get("/api/experiments?who=all&metric=loss&sort=-metric").json()
    assert [e["name"] for e in api["items"]] == ["lr-a", "lr-c", "lr-b", "no-metric"]
