"""The clusters page: every cluster the backends report, with stop and down.

This page is where the two apps meet for display: it shows the experiments'
jobs beside the clusters they ran on, and a stop or down of a SkyDeck cluster
goes through its experiment's desired state, so the reconciler agrees with it
instead of relaunching. The cluster models, backends and poller stay free of
``experiments``.
"""

import logging

from django.contrib import messages
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from .backends import get_backend
from .backends.base import BackendError
from .models import OWNED_PREFIX, Cluster

logger = logging.getLogger(__name__)
ACTIONS = {"stop": ("Stop", "STOPPED"), "down": ("Tear down", "TERMINATED")}


def _clusters_context():
    from experiments.models import Experiment, Job
    from experiments.views import change_token

    clusters = list(Cluster.objects.order_by("backend", "name"))
    names = [c.name for c in clusters]
    active = {}
    for job in Job.objects.active().filter(cluster_name__in=names).select_related("experiment").order_by("attempt"):
        active.setdefault(job.cluster_name, []).append(job)
    counts = dict(
        Job.objects.filter(cluster_name__in=names).values("cluster_name").annotate(n=Count("id")).values_list("cluster_name", "n")
    )
    owned_names = [c.name.removeprefix(OWNED_PREFIX) for c in clusters if c.owned]
    experiments = {e.name: e for e in Experiment.objects.filter(name__in=owned_names).only("name", "desired_state", "phase")}
    for c in clusters:
        c.active_jobs = active.get(c.name, [])
        c.job_count = counts.get(c.name, 0)
        c.experiment = experiments.get(c.name.removeprefix(OWNED_PREFIX)) if c.owned else None
    token = change_token(
        [(c.pk, c.status, c.resources, c.autostop, c.hourly_cost, c.total_cost, c.last_seen_at, c.job_count,
          [(j.pk, j.status) for j in c.active_jobs], c.experiment.desired_state if c.experiment else None) for c in clusters],
    )
    return {"clusters": clusters, "token": token}


@require_GET
def cluster_list(request):
    context = _clusters_context()
    if request.htmx and not request.htmx.history_restore_request:
        if request.GET.get("token") == context["token"]:
            return HttpResponse(status=204)
        return render(request, "clusters/list.html#table", context)
    return render(request, "clusters/list.html", context)


@require_POST
def cluster_action(request, backend, name, action):
    from experiments.models import Experiment
    from experiments.views import confirm

    if action not in ACTIONS:
        messages.error(request, f"Unknown action {action!r}.")
        return redirect("clusters:list")
    cluster = get_object_or_404(Cluster, backend=backend, name=name)
    verb, state = ACTIONS[action]
    experiment = Experiment.objects.filter(name=name.removeprefix(OWNED_PREFIX)).first() if cluster.owned else None
    if not request.POST.get("confirmed"):
        if experiment is not None:
            detail = (f"{name} belongs to experiment {experiment.name}: its desired state becomes {state}, "
                      "its running job is cancelled and SkyDeck " + ("stops the cluster (the disk is kept)." if action == "stop" else "tears the cluster down (the disk is lost)."))
        else:
            detail = f"SkyDeck asks the {cluster.get_backend_display()} backend to {action} {name} now." + (
                " The disk is kept." if action == "stop" else " The cluster and its disk are deleted.")
        return confirm(request, title=f"{verb} cluster {name}?", message=detail, action_label=f"{verb} {name}",
                       danger=action == "down")
    if experiment is not None:
        if experiment.set_desired_state(state, user=request.user):
            messages.success(request, f"{experiment.name} set to {state}; the reconciler will {action} {name}.")
        else:
            messages.info(request, f"{experiment.name} is already {state}.")
        return redirect("clusters:list")
    try:
        backend_impl = get_backend(backend)
        backend_impl.stop(name) if action == "stop" else backend_impl.down(name)
    except BackendError as exc:
        messages.error(request, f"Could not {action} {name}: {exc.message}")
    else:
        logger.info("user %s asked to %s cluster %s/%s", request.user, action, backend, name)
        messages.success(request, f"Asked {backend} to {action} {name}; the next poll shows the result.")
    return redirect(reverse("clusters:list"))
