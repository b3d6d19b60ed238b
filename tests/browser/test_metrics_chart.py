"""Metrics in a real browser: a real job's loss plotted as it trains, a restart marked, and a sweep's winner.

The control loop (poll and reconcile) and the worker's metrics pass run in background
threads of the test process, and the local backend runs examples/train.py for real.
The charts are the partials of templates/experiments/metrics.html; until the experiment
and sweep pages include them, this module's URLconf serves a page that includes each
the same way, on base.html.
"""

import sys
import threading

import pytest
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.template import engines
from django.urls import include, path
from playwright.sync_api import expect

from experiments import metrics, sweeps
from experiments.metric_models import MetricSeries
from experiments.models import Experiment, Sweep
from skydeck_site import prometheus
from skydeck_site import urls as site_urls
from tests.factories import ExperimentFactory
from tests.support import ROOT, actor, log_in, restart, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LONG = 60_000  # real jobs on a busy machine: a wait, not a timed assertion
TRAIN = f"{sys.executable} {ROOT / 'examples' / 'train.py'}"
TEMPLATES = ROOT / "templates" / "experiments"


def _included(template, partial):
    return f"experiments/metrics.html#{partial}" in (TEMPLATES / template).read_text()


def _stand_in(partial, model, key):
    source = (
        '{% extends "base.html" %}{% block content %}<h1>{{ object.name }}</h1>'
        f'{{% include "experiments/metrics.html#{partial}" %}}{{% endblock %}}'
    )

    def view(request, name):
        found = get_object_or_404(model, name=name)
        context = {"object": found, key: found, "may_change": True}
        return HttpResponse(engines["django"].from_string(source).render(context, request))

    return view


def _urlpatterns():
    wired = {getattr(p, "namespace", None) for p in site_urls.urlpatterns}
    extra = [] if "metrics" in wired else [path("", include("experiments.metric_urls"))]
    if not any(str(p.pattern) == "metrics" for p in site_urls.urlpatterns):
        extra.append(path("metrics", prometheus.metrics, name="prometheus"))
    extra += [
        path("stand-in/experiments/<slug:name>/", _stand_in("experiment_charts", Experiment, "experiment")),
        path("stand-in/sweeps/<slug:name>/", _stand_in("sweep_metrics", Sweep, "sweep")),
    ]
    return extra + list(site_urls.urlpatterns)


urlpatterns = _urlpatterns()
pytestmark.append(pytest.mark.urls(__name__))


def experiment_page(name):
    return (
        f"/experiments/{name}/" if _included("detail.html", "experiment_charts") else f"/stand-in/experiments/{name}/"
    )


def sweep_page(name):
    return f"/sweeps/{name}/" if _included("sweep_detail.html", "sweep_metrics") else f"/stand-in/sweeps/{name}/"


@pytest.fixture
def metrics_pass(control_loop):
    """The worker's metrics pass every few hundred milliseconds, beside the control loop."""
    from django.db import connection

    stop = threading.Event()
    errors = []

    def run():
        try:
            while not stop.is_set():
                try:
                    metrics.parse_all()
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    errors.append(exc)
                stop.wait(0.3)
        finally:
            connection.close()

    thread = threading.Thread(target=run, name="metrics-pass", daemon=True)
    thread.start()
    yield errors
    stop.set()
    thread.join(timeout=30)


def test_a_training_runs_loss_is_plotted_live_and_a_restart_continues_it(page, metrics_pass, control_loop, screenshots):
    exp = ExperimentFactory(
        name="watch-loss",
        command=TRAIN,
        flags={"steps": 60, "step_seconds": 0.3, "lr": 0.003},  # slow enough to restart it part-way on a busy machine
        desired_state="RUNNING",
        run_number=1,
    )
    log_in(page)
    page.goto(experiment_page(exp.name))
    chart = page.locator('#metrics figure[data-metric="loss"]')
    expect(chart.locator("canvas")).to_be_visible(timeout=LONG)
    expect(chart.locator(".u-legend")).to_contain_text("#1")
    expect(page.locator('#metrics figure[data-metric="accuracy"] canvas')).to_be_visible()
    expect(page.locator("#metrics [data-metrics-status]")).to_contain_text("Live")
    box = chart.locator("canvas").bounding_box()
    assert box["width"] > 200 and box["height"] > 100

    # Restarted part-way, the script goes on from its checkpoint: attempt #2 continues the curve.
    wait_for(lambda: loss_series(exp, 1, last_step__gte=10), timeout=LONG / 1000, message="ten steps")
    restart(Experiment.objects.get(pk=exp.pk))
    expect(chart.locator(".u-legend")).to_contain_text("#2", timeout=LONG)
    # It follows the job without a reload, to the last step.
    expect(chart.locator("figcaption")).to_contain_text("at step 60 (#2)", timeout=LONG)
    first, second = loss_series(exp, 1), loss_series(exp, 2)
    assert first.first_step == 1 and 10 <= first.last_step < 60
    assert second.first_step > 1 and second.first_step <= first.last_step + 1 and second.last_step == 60
    page.screenshot(path=screenshots / "metrics-experiment.png", full_page=True)
    assert metrics_pass == [] and control_loop == []


def loss_series(exp, attempt, **more):
    return MetricSeries.objects.filter(experiment=exp, attempt=attempt, name="loss", **more).first()


def test_a_sweep_of_six_shows_which_learning_rate_won(page, metrics_pass, control_loop, screenshots, owner):
    base = ExperimentFactory(name="lr-base", command=TRAIN, flags={"steps": 5, "step_seconds": 0, "lr": 0.001})
    sweep = sweeps.create_sweep(
        actor(owner),
        name="lr",
        base=base,
        kind="grid",
        parameters={"lr": [0.0001, 0.001, 0.003, 0.01, 0.1, 1.0]},
        desired_state="RUNNING",
    )
    winner = Experiment.objects.get(sweep=sweep, flags__lr=0.003).name
    log_in(page)
    page.goto(sweep_page(sweep.name))
    section = page.locator("#sweep-metrics")
    # Every child has reported (the table refreshes itself), and the best is marked.
    expect(section.locator("table.sweep-metric-table tbody tr")).to_have_count(6, timeout=LONG)
    expect(section.locator("table.sweep-metric-table td.num .muted")).to_have_count(0, timeout=LONG)
    expect(section.locator("tr.is-best")).to_contain_text(winner)
    expect(section.locator(".best-line")).to_contain_text(winner)
    plot = section.locator('[data-sweep-plots] figure[data-flag="lr"]')
    expect(plot.locator("canvas")).to_be_visible()
    expect(plot.locator(".u-legend")).to_contain_text("best")
    # Sorting by the flag, then choosing accuracy (higher wins): the same winner.
    section.get_by_role("link", name="lr", exact=True).click()
    # The sorted table has come back and htmx has finished swapping it in before the next choice is made on it.
    expect(section.locator("th[aria-sort]")).to_contain_text("lr")
    page.wait_for_function("!document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling, .htmx-added')")
    expect(section.locator("table.sweep-metric-table tbody tr").first).to_contain_text("0.0001")
    section.get_by_label("Metric").select_option("accuracy")
    expect(section.get_by_label("Best is")).to_have_value("max")
    expect(section.locator("tr.is-best")).to_contain_text(winner)
    page.screenshot(path=screenshots / "metrics-sweep.png", full_page=True)
    assert metrics_pass == [] and control_loop == []
