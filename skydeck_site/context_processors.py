from django.conf import settings

from clusters.models import BackendHealth, Heartbeat


def system_banner(request):
    """Warnings every page shows, so stale data never looks fresh."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    warnings = []
    poll = Heartbeat.objects.filter(name="poll").first()
    if poll is None or poll.is_late(settings.SKYDECK_POLL_INTERVAL):
        since = f" since {poll.finished_at:%Y-%m-%d %H:%M:%S} UTC" if poll and poll.finished_at else ""
        warnings.append(f"The poller has not run{since}: statuses may be stale. Is the worker (and beat) running?")
    for health in BackendHealth.objects.filter(reachable=False, backend__in=settings.SKYDECK_BACKENDS):
        since = f"{health.unreachable_since:%Y-%m-%d %H:%M:%S} UTC" if health.unreachable_since else "a while"
        warnings.append(f"Backend {health.backend} unreachable since {since}: {health.last_error[:200]}")
    return {"system_warnings": warnings}
