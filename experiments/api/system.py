"""/api/health, /api/refresh, /api/reconcile: the control loops, seen and nudged."""

from django.conf import settings
from django.db import DatabaseError, connection
from ninja import Router, Status

from clusters.models import BackendHealth, Heartbeat

from .. import enqueue
from .errors import ApiError, ErrorOut, responses
from .schemas import HealthOut, QueuedOut

router = Router(tags=["system"])


def _database_answers():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except DatabaseError:
        return False


# 503 is this answer when the check fails, or the error shape when the database fails before it (the token lookup).
@router.get("/health", response={**responses(HealthOut), 503: HealthOut | ErrorOut})
def health(request):
    """The database, the control loops' last runs and the backends' reachability; 503 when the database fails."""
    if not _database_answers():
        return Status(503, {"status": "degraded", "database": False, "loops": [], "backends": []})
    intervals = {"poll": settings.SKYDECK_POLL_INTERVAL, "reconcile": settings.SKYDECK_RECONCILE_INTERVAL}
    loops = list(Heartbeat.objects.filter(name__in=list(intervals)).order_by("name"))
    for beat in loops:
        beat.late = beat.is_late(intervals[beat.name])
    backends = list(BackendHealth.objects.order_by("backend"))
    degraded = any(not b.reachable for b in backends) or any(not beat.ok or beat.late for beat in loops)
    return {"status": "degraded" if degraded else "ok", "database": True, "loops": loops, "backends": backends}


def _queue(task, what):
    if not enqueue.send(task):
        raise ApiError(503, f"Could not queue the {what}: the broker cannot be reached.")
    return Status(202, {"queued": True, "task": what})


@router.post("/refresh", response=responses(QueuedOut, 202))
def refresh(request):
    """Poll the backends now (queued for the worker)."""
    return _queue("experiments.tasks.poll", "poll")


@router.post("/reconcile", response=responses(QueuedOut, 202))
def reconcile(request):
    """Reconcile every experiment now (queued for the worker)."""
    return _queue("experiments.tasks.reconcile_all", "reconcile")
