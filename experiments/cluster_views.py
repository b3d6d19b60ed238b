"""The Clusters page: every cluster the backends report, beside the experiments that own them.

It lives with the experiments because it acts: a stop or down of a SkyDeck
cluster goes through its experiment's desired state (``intent``), so the
reconciler agrees with it instead of relaunching; one of someone else's is
handed to the worker. The page itself never calls a backend.

An orphan is a cluster no experiment owns (not SkyDeck's, or its experiment
is gone), or one that is UP while its experiment does not want to run: it
bills and nobody asked for it. Orphans are marked, and may be stopped or torn
down together.
"""

from dataclasses import dataclass

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from clusters.models import OWNED_PREFIX, Cluster, ClusterStatus
from skydeck_site.htmx import change_token, confirm, page_or_fragment

from . import enqueue, intent
from .models import DesiredState, Experiment, Job

ACTIONS = {"stop": ("Stop", DesiredState.STOPPED), "down": ("Tear down", DesiredState.TERMINATED)}


def orphan_reason(cluster):
    """Why nobody wants this cluster ('' when someone does); ``cluster.experiment`` is its owner, or None."""
    experiment = cluster.experiment
    if experiment is None:
        if cluster.owned:
            return f"No experiment owns it: {cluster.name.removeprefix(OWNED_PREFIX)} is gone."
        return "No experiment owns it."
    if experiment.desired_state != DesiredState.RUNNING and cluster.status == ClusterStatus.UP:
        return f"UP, but {experiment.name} wants {experiment.desired_state}."
    return ""


def _selected(request):
    return sorted(set(request.GET.getlist("selected")))


def _clusters_context(request):
    clusters = list(Cluster.objects.order_by("backend", "name"))
    names = [c.name for c in clusters]
    active = {}
    for job in Job.objects.active().filter(cluster_name__in=names).select_related("experiment").order_by("attempt"):
        active.setdefault(job.cluster_name, []).append(job)
    counts = dict(
        Job.objects.filter(cluster_name__in=names)
        .values("cluster_name")
        .annotate(n=Count("id"))
        .values_list("cluster_name", "n")
    )
    owned_names = [c.name.removeprefix(OWNED_PREFIX) for c in clusters if c.owned]
    experiments = {
        e.name: e for e in Experiment.objects.filter(name__in=owned_names).only("name", "desired_state", "phase")
    }
    selected = _selected(request)
    for c in clusters:
        c.active_jobs = active.get(c.name, [])
        c.job_count = counts.get(c.name, 0)
        c.experiment = experiments.get(c.name.removeprefix(OWNED_PREFIX)) if c.owned else None
        c.orphan = orphan_reason(c)
        c.key = f"{c.backend}/{c.name}"
        c.selected = c.key in selected
    orphans = [c for c in clusters if c.orphan]
    up = [c for c in clusters if c.status == ClusterStatus.UP]
    token = change_token(
        [
            (c.pk, c.status, c.resources, c.autostop, c.hourly_cost, c.total_cost, c.last_seen_at, c.job_count,
             [(j.pk, j.status) for j in c.active_jobs], c.experiment.desired_state if c.experiment else None,
             c.launched_at)
            for c in clusters
        ],
        selected,
        bool(request.GET.get("all_orphans")),
    )  # fmt: skip
    return {
        "clusters": clusters,
        "token": token,
        "orphans": orphans,
        "orphan_hourly": sum(c.hourly_cost or 0 for c in orphans if c.status == ClusterStatus.UP),
        "up_hourly": sum(c.hourly_cost or 0 for c in up),
        "up_count": len(up),
        "all_orphans": bool(request.GET.get("all_orphans")),
    }


@require_GET
def cluster_list(request):
    context = _clusters_context(request)
    return page_or_fragment(request, "clusters/list.html", "table", context, token=context["token"])


@require_POST
def cluster_action(request, backend, name, action):
    if action not in ACTIONS:
        messages.error(request, f"Unknown action {action!r}.")
        return redirect("clusters:list")
    cluster = get_object_or_404(Cluster, backend=backend, name=name)
    verb, state = ACTIONS[action]
    experiment = Experiment.objects.filter(name=name.removeprefix(OWNED_PREFIX)).first() if cluster.owned else None
    if not request.POST.get("confirmed"):
        if experiment is not None and experiment.desired_state == state and cluster.status == ClusterStatus.UP:
            detail = (
                f"{name} belongs to experiment {experiment.name}, which already wants {state}, yet it is UP: "
                f"SkyDeck asks the {cluster.get_backend_display()} backend to {action} it."
                + (" The disk is kept." if action == "stop" else " The cluster and its disk are deleted.")
            )
        elif experiment is not None:
            running = experiment.active_job
            detail = (
                f"{name} belongs to experiment {experiment.name}: its desired state becomes {state}"
                + (f", attempt {running.attempt} is cancelled" if running else "")
                + " and SkyDeck "
                + (
                    "stops the cluster (the disk is kept)."
                    if action == "stop"
                    else "tears the cluster down (the disk is lost)."
                )
            )
        else:
            detail = f"SkyDeck asks the {cluster.get_backend_display()} backend to {action} {name}." + (
                " The disk is kept." if action == "stop" else " The cluster and its disk are deleted."
            )
        return confirm(
            request,
            title=f"{verb} cluster {name}?",
            message=detail,
            action_label=f"{verb} {name}",
            danger=action == "down",
            cancel_url=reverse("clusters:list"),
        )
    level, text = act(request, cluster, experiment, action).said
    getattr(messages, level)(request, text)
    return redirect("clusters:list")


@dataclass
class Done:
    """What one stop or down did: through the experiment, handed to the worker, or refused."""

    name: str
    how: str  # "intent", "worker", "refused", "not queued"
    said: tuple  # (message level, words)


def act(request, cluster, experiment, action):
    """Stop or tear down one cluster, never calling a backend from here.

    An owned cluster's experiment gets the matching desired state, so the reconciler
    does it (and does not relaunch). Where the experiment already wants that and the
    cluster is still up (an orphan), or where no experiment owns it, the worker is asked.
    """
    _, state = ACTIONS[action]
    name, backend = cluster.name, cluster.backend
    if experiment is not None:
        actor = intent.Actor.of(request)
        try:
            changed = intent.set_desired_state(actor, experiment, state)
        except PermissionDenied as exc:
            return Done(name, "refused", ("error", str(exc)))
        if changed:
            return Done(
                name, "intent", ("success", f"{experiment.name} set to {state}; the reconciler will {action} {name}.")
            )
        if cluster.status != ClusterStatus.UP:
            return Done(name, "intent", ("info", f"{experiment.name} is already {state}."))
    if enqueue.send("experiments.tasks.cluster_action", (backend, name, action, request.user.get_username())):
        return Done(name, "worker", ("success", f"Asked {backend} to {action} {name}; the next poll shows the result."))
    return Done(
        name,
        "not queued",
        ("error", f"Could not queue the {action} of {name}: the worker's broker is not answering."),
    )


@require_POST
def cluster_bulk(request):
    """Stop or tear down the selected orphans (or all of them), after a confirmation."""
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        messages.error(request, "Choose Stop or Tear down.")
        return redirect("clusters:list")
    context = _clusters_context(request)
    orphans = context["orphans"]
    if not request.POST.get("all_orphans"):
        wanted = set(request.POST.getlist("selected"))
        orphans = [c for c in orphans if c.key in wanted]
    if not orphans:
        messages.error(request, "No orphan selected: tick some, or “all orphans”.")
        return redirect("clusters:list")
    verb, state = ACTIONS[action]
    n = len(orphans)
    if not request.POST.get("confirmed"):
        owned = sum(1 for c in orphans if c.experiment is not None)
        detail = (
            f"SkyDeck asks the backends to {action} {'it' if n == 1 else 'them'}"
            + (
                f"; {'its' if owned == 1 else 'their'} experiment{'s' if owned != 1 else ''} "
                f"{'is' if owned == 1 else 'are'} set {state} first"
                if owned
                else ""
            )
            + (". Disks are kept." if action == "stop" else ". The clusters and their disks are deleted.")
        )
        return confirm(
            request,
            title=f"{verb} {n} orphan cluster{'s' if n != 1 else ''}?",
            message=detail,
            items=[f"{c.name} ({c.get_backend_display()}) — {c.orphan}" for c in orphans],
            action_label=f"{verb} {n}",
            danger=action == "down",
            cancel_url=reverse("clusters:list"),
        )
    done = [act(request, c, c.experiment, action) for c in orphans]
    asked = [d.name for d in done if d.how in {"intent", "worker"}]
    if asked:
        messages.success(
            request,
            f"Asked to {action} {len(asked)} cluster{'s' if len(asked) != 1 else ''} ({', '.join(asked[:10])}"
            + ("…" if len(asked) > 10 else "")
            + "); the next poll shows the result.",
        )
    for d in done:
        if d.how not in {"intent", "worker"}:
            messages.error(request, d.said[1])
    return redirect("clusters:list")
