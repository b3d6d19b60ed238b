from django.conf import settings
from django.utils import timezone

from clusters.models import BackendHealth, Heartbeat


def _when(moment):
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({int((timezone.now() - moment).total_seconds() // 60)} min ago)"


def _warnings():
    """(key, words) for what makes the data on screen stale; two queries."""
    warnings = []
    beats = {h.name: h for h in Heartbeat.objects.filter(name__in=["poll", "reconcile"])}
    poll = beats.get("poll")
    if poll is None or poll.finished_at is None:
        warnings.append(
            (
                "poll-never",
                "The poller has never run: statuses are not being updated. Is the worker (and beat) running?",
            )
        )
    elif poll.is_late(settings.SKYDECK_POLL_INTERVAL):
        warnings.append(
            ("poll-late", f"The poller is late: last poll finished {_when(poll.finished_at)}. Statuses may be stale.")
        )
    reconcile = beats.get("reconcile")
    if poll is not None and reconcile is not None and reconcile.is_late(settings.SKYDECK_RECONCILE_INTERVAL):
        warnings.append(
            (
                "reconcile-late",
                f"The reconciler is late: last pass finished {_when(reconcile.finished_at)}. "
                "Changes may not be applied.",
            )
        )
    for health in BackendHealth.objects.filter(reachable=False, backend__in=settings.SKYDECK_BACKENDS):
        since = _when(health.unreachable_since) if health.unreachable_since else "a while"
        warnings.append(
            (
                f"unreachable-{health.backend}",
                f"Backend {health.backend} is unreachable since {since}: {health.last_error[:200]}",
            )
        )
    return warnings


def _request_warnings(request):
    """The warnings, read once per request (the banner and a change token both ask)."""
    if request is None:
        return _warnings()
    if not hasattr(request, "_skydeck_warnings"):
        request._skydeck_warnings = _warnings()
    return request._skydeck_warnings


def system_warnings(request=None):
    """What makes the data on screen stale, in words; two queries."""
    return [words for _, words in _request_warnings(request)]


def warning_keys(request=None):
    """Which warnings the banner shows, without their words (which count minutes): for change tokens."""
    return [key for key, _ in _request_warnings(request)]


def system_banner(request):
    """Warnings every page shows, so stale data never looks fresh."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return {"system_warnings": system_warnings(request)}
