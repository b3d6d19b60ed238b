"""Asks the backends what runs and writes Cluster rows.

One ``list_clusters`` call per backend, one ``list_jobs`` call per UP cluster
that SkyDeck owns, one ``resolve_requests`` call for all requests in flight,
and one ``list_managed_jobs`` call when managed jobs are in flight: never a
call per experiment. It returns the job observations; deciding what they
mean is the experiments app's business.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .backends import get_backend
from .backends.base import BackendError, BackendUnreachable, ClusterGone
from .models import OWNED_PREFIX, BackendHealth, Cluster, ClusterStatus

logger = logging.getLogger(__name__)

MAX_POLL_BACKOFF = 600.0


@dataclass
class BackendPoll:
    backend: str
    reachable: bool = True
    skipped: bool = False  # backing off after failures
    error: str = ""
    clusters: dict = field(default_factory=dict)  # name -> ClusterInfo
    jobs: dict = field(default_factory=dict)  # cluster name -> [JobInfo], for queues fetched
    gone: set = field(default_factory=set)  # clusters whose queue call said they do not exist
    requests: dict = field(default_factory=dict)  # request id -> RequestResult
    managed_jobs: list | None = None
    calls: int = 0
    # When the backend was first asked: a job submitted later may be missing
    # from this snapshot without having vanished.
    observed_at: datetime | None = None

    @property
    def usable(self):
        return self.reachable and not self.skipped

    def summary(self):
        if self.skipped:
            return f"{self.backend}: skipped (backing off)"
        if not self.reachable:
            return f"{self.backend}: unreachable ({self.error})"
        jobs = sum(len(v) for v in self.jobs.values())
        return (
            f"{self.backend}: {len(self.clusters)} clusters, {jobs} jobs, "
            f"{len(self.requests)} requests resolved, {self.calls} calls"
        )


def poll_backend(name, *, request_ids=(), managed=False):
    """Ask one backend everything SkyDeck needs, in a fixed number of calls."""
    now = timezone.now()
    health, _ = BackendHealth.objects.get_or_create(backend=name)
    result = BackendPoll(backend=name, observed_at=now)
    if health.next_poll_at and health.next_poll_at > now and not health.reachable:
        result.skipped = True
        result.reachable = False
        return result
    backend = get_backend(name)
    try:
        # Requests first: a launch or down that just finished then shows in the
        # cluster list of this same poll, not the next one.
        if request_ids:
            result.calls += 1
            result.requests = backend.resolve_requests(list(request_ids))
        result.calls += 1
        result.clusters = {c.name: c for c in backend.list_clusters()}
        for cluster in result.clusters.values():
            if cluster.name.startswith(OWNED_PREFIX) and cluster.status == ClusterStatus.UP:
                result.calls += 1
                try:
                    result.jobs[cluster.name] = backend.list_jobs(cluster.name)
                except ClusterGone:
                    result.gone.add(cluster.name)
                except BackendUnreachable:
                    raise
                except BackendError as exc:
                    logger.warning("queue of %s failed: %s", cluster.name, exc)
        if managed and hasattr(backend, "list_managed_jobs"):
            result.calls += 1
            result.managed_jobs = backend.list_managed_jobs()
    except BackendUnreachable as exc:
        result.reachable = False
        result.error = exc.message
        _mark_unreachable(health, exc.message, now)
        return result
    _mark_reachable(health, now, result.calls)
    _write_clusters(name, result.clusters, now)
    return result


def _mark_unreachable(health, message, now):
    failures = health.consecutive_failures + 1
    delay = min(MAX_POLL_BACKOFF, settings.SKYDECK_POLL_INTERVAL * 2 ** (failures - 1))
    health.reachable = False
    health.unreachable_since = health.unreachable_since or now
    health.consecutive_failures = failures
    health.next_poll_at = now + timedelta(seconds=delay)
    health.last_error = message[:2000]
    health.save()


def _mark_reachable(health, now, calls):
    health.reachable = True
    health.unreachable_since = None
    health.consecutive_failures = 0
    health.next_poll_at = None
    health.last_error = ""
    health.last_ok_at = now
    health.last_calls = calls
    health.save()


def _write_clusters(backend_name, clusters, now):
    existing = {c.name: c for c in Cluster.objects.filter(backend=backend_name)}
    for name, info in clusters.items():
        row = existing.pop(name, None) or Cluster(backend=backend_name, name=name)
        row.status = info.status
        row.resources = info.resources[:300]
        row.num_nodes = info.num_nodes
        row.infra = info.infra[:200]
        row.launched_at = info.launched_at or row.launched_at
        row.last_seen_at = now
        row.autostop = info.autostop
        row.hourly_cost = info.hourly_cost
        row.total_cost = info.total_cost
        row.status_message = info.message
        row.save()
    # What the backend no longer reports is gone.
    if existing:
        Cluster.objects.filter(pk__in=[c.pk for c in existing.values()]).delete()
