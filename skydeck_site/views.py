"""The system page: is the control loop alive, are the backends reachable, how much is queued."""

import os

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, Sum
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET

from clusters.models import BackendHealth, Cluster, Heartbeat
from experiments.models import DesiredState, Experiment, Job, Phase


def queue_depth():
    """Tasks waiting on the broker, or None when it cannot be read cheaply."""
    url = settings.CELERY_BROKER_URL
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.3)
            return int(client.llen("celery"))
        if url.startswith("filesystem://"):
            folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
            with os.scandir(folder) as entries:
                return sum(1 for e in entries if e.is_file() and e.name.endswith(".msg"))
    except Exception:  # noqa: BLE001 - an unreadable broker shows as "unknown"
        return None
    return None


@require_GET
def system(request):
    heartbeats = {h.name: h for h in Heartbeat.objects.filter(name__in=["poll", "reconcile"])}
    loops = []
    for name, interval in (
        ("poll", settings.SKYDECK_POLL_INTERVAL),
        ("reconcile", settings.SKYDECK_RECONCILE_INTERVAL),
    ):
        beat = heartbeats.get(name)
        loops.append({"name": name, "beat": beat, "interval": interval, "late": beat is None or beat.is_late(interval)})
    health = {h.backend: h for h in BackendHealth.objects.all()}
    backends = [{"name": b, "health": health.get(b)} for b in settings.SKYDECK_BACKENDS]
    phases = dict(Experiment.objects.values("phase").annotate(n=Count("id")).values_list("phase", "n"))
    desired = dict(Experiment.objects.values("desired_state").annotate(n=Count("id")).values_list("desired_state", "n"))
    up = Cluster.objects.up().aggregate(n=Count("id"), hourly=Sum("hourly_cost"), priced=Count("hourly_cost"))
    return render(
        request,
        "system.html",
        {
            "loops": loops,
            "backends": backends,
            "queue_depth": queue_depth(),
            "broker": settings.CELERY_BROKER_URL.split("://")[0],
            "phase_counts": [(label, phases.get(value, 0), value) for value, label in Phase.choices],
            "desired_counts": [(label, desired.get(value, 0), value) for value, label in DesiredState.choices],
            "experiment_count": sum(phases.values()),
            "active_jobs": Job.objects.active().count(),
            "cluster_count": Cluster.objects.count(),
            # What is UP right now costs this much an hour (clusters whose backend gives no price count as 0).
            "up_count": up["n"],
            "up_hourly": up["hourly"] or 0.0,
            "up_unpriced": up["n"] - up["priced"],
        },
    )


@login_not_required
@require_GET
def favicon(request):
    """/favicon.ico, which browsers ask for on pages that name no icon (the API's JSON, say)."""
    response = HttpResponseRedirect(static("favicon.svg"))
    patch_cache_control(response, public=True, max_age=86400)
    return response
