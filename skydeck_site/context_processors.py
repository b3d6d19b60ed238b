from django.conf import settings
from django.utils import timezone

from clusters.models import BackendHealth, Heartbeat


def _when(moment):
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({int((timezone.now() - moment).total_seconds() // 60)} min ago)"


def system_warnings():
    """What makes the data on screen stale, in words; two queries."""
    warnings = []
    beats = {h.name: h for h in Heartbeat.objects.filter(name__in=["poll", "reconcile"])}
    poll = beats.get("poll")
    if poll is None or poll.finished_at is None:
        warnings.append("The poller has never run: statuses are not being updated. Is the worker (and beat) running?")
    elif poll.is_late(settings.SKYDECK_POLL_INTERVAL):
        warnings.append(f"The poller is late: last poll finished {_when(poll.finished_at)}. Statuses may be stale.")
    reconcile = beats.get("reconcile")
    if poll is not None and reconcile is not None and reconcile.is_late(settings.SKYDECK_RECONCILE_INTERVAL):
        warnings.append(f"The reconciler is late: last pass finished {_when(reconcile.finished_at)}. Changes may not be applied.")
    for health in BackendHealth.objects.filter(reachable=False, backend__in=settings.SKYDECK_BACKENDS):
        since = _when(health.unreachable_since) if health.unreachable_since else "a while"
        warnings.append(f"Backend {health.backend} is unreachable since {since}: {health.last_error[:200]}")
    return warnings


def system_banner(request):
    """Warnings every page shows, so stale data never looks fresh."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"system_warnings": system_warnings()}
