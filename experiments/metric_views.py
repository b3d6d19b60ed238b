"""What the charts read: an experiment's series as JSON, a sweep compared by a metric, the metric pattern.

Everything here reads what the worker stored (``experiments.metrics``); no request reads
or parses a log, and none calls a backend.
"""

from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from skydeck_site.htmx import change_token, is_poll, page_or_fragment

from . import intent, metrics
from .models import Experiment, Sweep


def _cursor(raw):
    try:
        return min(max(0, int(raw or 0)), 2**62)
    except ValueError:
        return 0


@require_GET
def experiment_metrics(request, name):
    """Series of the latest attempts, with only the points after ``since`` (the ``cursor`` of the last answer)."""
    experiment = get_object_or_404(Experiment.objects.only("pk", "name"), name=name)
    data = metrics.experiment_metrics(experiment, since=_cursor(request.GET.get("since")))
    response = JsonResponse(data)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def experiment_pattern(request, name):
    """Set or remove the experiment's own metric line format; its jobs' output is read again."""
    experiment = get_object_or_404(Experiment, name=name)
    try:
        changed = metrics.set_pattern(intent.Actor.of(request), experiment, request.POST.get("pattern", ""))
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        messages.error(request, f"Metric pattern not saved: {' '.join(exc.messages)}")
    else:
        if changed:
            messages.success(request, "Metric pattern saved: the output of every attempt is read again with it.")
    return redirect(experiment.get_absolute_url() + "#metrics")


def _links(sweep, comparison):
    """The table's sortable columns: the page's URL (bookmarkable) and the fragment's (htmx)."""
    page = sweep.get_absolute_url()
    fragment = reverse("metrics:sweep", args=[sweep.name])
    base = {"metric": comparison.metric, "value": comparison.value, "goal": comparison.goal}
    current, descending = comparison.sort.lstrip("-"), comparison.sort.startswith("-")
    columns = []
    for key, label in [("name", "Experiment"), *((f"flag:{p}", p) for p in comparison.paths), ("value", "")]:
        ascending_first = key != "value" or comparison.goal == "min"
        if key == current:
            sort = key if descending else f"-{key}"
            aria = "descending" if descending else "ascending"
        else:
            sort = key if ascending_first else f"-{key}"
            aria = None
        query = urlencode({**base, "sort": sort})
        columns.append(
            {"key": key, "label": label, "page": f"{page}?{query}", "fragment": f"{fragment}?{query}", "aria": aria}
        )
    return columns


@require_GET
def sweep_metrics(request, name):
    """The sweep's comparison by one metric: plots against each varied flag and a sortable table (a fragment)."""
    sweep = get_object_or_404(Sweep, name=name)
    comparison = metrics.compare_sweep(
        sweep,
        metric=request.GET.get("metric", ""),
        value=request.GET.get("value", ""),
        goal=request.GET.get("goal", ""),
        sort=request.GET.get("sort", ""),
    )
    query = urlencode(
        {"metric": comparison.metric, "value": comparison.value, "goal": comparison.goal, "sort": comparison.sort}
    )
    if not is_poll(request):
        # The fragment lives on the sweep's page: a plain visit goes there, with the same choices.
        return redirect(f"{sweep.get_absolute_url()}?{query}")
    token = change_token(comparison.token_parts())

    def context():
        return {
            "sweep": sweep,
            "comparison": comparison,
            "columns": _links(sweep, comparison),
            "self_url": f"{reverse('metrics:sweep', args=[sweep.name])}?{query}",
            "value_choices": metrics.VALUE_CHOICES,
            "goal_choices": metrics.GOAL_CHOICES,
            "token": token,
        }

    return page_or_fragment(request, "experiments/metrics.html", "sweep_body", context, token=token)
