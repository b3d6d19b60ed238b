"""Asks the backends what runs and writes Cluster rows.

One ``list_clusters`` call per backend, one ``list_jobs`` call per UP cluster
that SkyDeck owns, one ``resolve_requests`` call for all requests in flight,
and one ``list_managed_jobs`` call when managed jobs are in flight: never a
call per experiment. It returns the job observations; deciding what they
mean is the experiments app's business.

Submit, then collect: every call goes to a bounded pool of threads at once
(the SkyPilot SDK returns a request id at once and its API server runs
requests in parallel), so a poll takes about as long as its slowest request,
not the sum. The queues of the clusters the last poll saw UP are asked beside
the cluster list; a cluster that came up since gets its queue right after.
A queue that fails or is too slow leaves only its own cluster unknown.
"""

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
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
    unknown: set = field(default_factory=set)  # UP clusters whose queue failed or timed out this time
    requests: dict = field(default_factory=dict)  # request id -> RequestResult
    managed_jobs: list | None = None
    calls: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # "list_jobs sd-x" -> seconds that call took, for the log
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
        text = (
            f"{self.backend}: {_count(len(self.clusters), 'cluster')}, {_count(jobs, 'job')}, "
            f"{_count(len(self.requests), 'request')} resolved, {_count(self.calls, 'call')} in {self.seconds:.1f} s"
        )
        if self.unknown:
            text += f"; queue unknown for {', '.join(sorted(self.unknown))}"
        if self.timings:
            label, seconds = max(self.timings.items(), key=lambda item: item[1])
            text += f"; slowest {label} {seconds:.1f} s"
        return text


def _count(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Calls:
    """The poll's calls, all in flight at once on a bounded pool; results collected by a deadline."""

    def __init__(self, pool, result, deadline):
        self.pool, self.result, self.deadline = pool, result, deadline

    def submit(self, fn, *args, **kwargs):
        self.result.calls += 1
        label = " ".join([fn.__name__, *(str(a) for a in args if isinstance(a, str))])
        return self.pool.submit(self._timed, label, fn, *args, **kwargs)

    def _timed(self, label, fn, *args, **kwargs):
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.result.timings[label] = time.monotonic() - started

    def collect(self, future):
        return future.result(timeout=max(0.1, self.deadline - time.monotonic()))


def poll_backend(name, *, request_ids=(), managed=False):
    """Ask one backend everything SkyDeck needs, in a fixed number of calls made side by side."""
    now = timezone.now()
    started = time.monotonic()
    health, _ = BackendHealth.objects.get_or_create(backend=name)
    result = BackendPoll(backend=name, observed_at=now)
    if health.next_poll_at and health.next_poll_at > now and not health.reachable:
        result.skipped = True
        result.reachable = False
        return result
    backend = get_backend(name)
    known_up = set(Cluster.objects.owned().up().filter(backend=name).values_list("name", flat=True))
    pool = ThreadPoolExecutor(max_workers=settings.SKYDECK_POLL_CONCURRENCY, thread_name_prefix=f"poll-{name}")
    calls = _Calls(pool, result, started + settings.SKYDECK_POLL_TIMEOUT)
    try:
        # Requests first in the list: a launch or down that just finished then shows
        # in the cluster list of this same poll, not the next one.
        requests = calls.submit(backend.resolve_requests, list(request_ids)) if request_ids else None
        clusters = calls.submit(backend.list_clusters)
        queues = {c: calls.submit(backend.list_jobs, c) for c in sorted(known_up)}
        managed_jobs = (
            calls.submit(backend.list_managed_jobs) if managed and hasattr(backend, "list_managed_jobs") else None
        )
        if requests is not None:
            result.requests = calls.collect(requests)
        result.clusters = {c.name: c for c in calls.collect(clusters)}
        up = {n for n, c in result.clusters.items() if n.startswith(OWNED_PREFIX) and c.status == ClusterStatus.UP}
        for cluster in sorted(up - known_up):
            queues[cluster] = calls.submit(backend.list_jobs, cluster)
        for cluster, future in queues.items():
            if cluster in up:
                _collect_queue(calls, result, cluster, future)
        if managed_jobs is not None:
            result.managed_jobs = calls.collect(managed_jobs)
    except (BackendUnreachable, FutureTimeout) as exc:
        message = exc.message if isinstance(exc, BackendError) else "the backend did not answer in time"
        result.reachable = False
        result.error = message
        _mark_unreachable(health, message, now)
        return result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(backend, "abandon_requests"):
            backend.abandon_requests()  # anything still waited on is cancelled on the server
        result.seconds = time.monotonic() - started
    _mark_reachable(health, now, result.calls, _describe(backend))
    write_clusters(name, result.clusters, now)
    return result


def _describe(backend):
    """What the backend says about itself (cheap, cached by the backend), for the System page."""
    if not hasattr(backend, "describe"):
        return None
    try:
        return backend.describe()
    except BackendError as exc:
        logger.info("%s could not describe itself: %s", backend.name, exc.message)
        return None


def _collect_queue(calls, result, cluster, future):
    try:
        result.jobs[cluster] = calls.collect(future)
    except ClusterGone:
        result.gone.add(cluster)
    except FutureTimeout:
        result.unknown.add(cluster)
        logger.warning("queue of %s did not answer within the poll's %s s", cluster, settings.SKYDECK_POLL_TIMEOUT)
    except BackendError as exc:  # unreachable included: the cluster list answered, so only this queue is unknown
        result.unknown.add(cluster)
        logger.warning("queue of %s failed: %s", cluster, exc.message)


def _mark_unreachable(health, message, now):
    failures = health.consecutive_failures + 1
    delay = min(MAX_POLL_BACKOFF, settings.SKYDECK_POLL_INTERVAL * 2 ** (failures - 1))
    health.reachable = False
    health.unreachable_since = health.unreachable_since or now
    health.consecutive_failures = failures
    health.next_poll_at = now + timedelta(seconds=delay)
    health.last_error = message[:2000]
    health.save()


def _mark_reachable(health, now, calls, details=None):
    if details is not None:
        health.details = {**health.details, **details}
    health.reachable = True
    health.unreachable_since = None
    health.consecutive_failures = 0
    health.next_poll_at = None
    health.last_error = ""
    health.last_ok_at = now
    health.last_calls = calls
    health.save()


def _values(info):
    return {
        "status": info.status,
        "resources": info.resources[:300],
        "num_nodes": info.num_nodes,
        "infra": info.infra[:200],
        "launched_at": info.launched_at,
        "autostop": info.autostop,
        "hourly_cost": info.hourly_cost,
        "total_cost": info.total_cost,
        "status_message": info.message,
    }


def write_clusters(backend_name, clusters, now, existing=None):
    """Make the Cluster rows what the backend reported: upsert what changed, delete what is gone.

    A row a reconciler wrote meanwhile (it records a cluster it just launched, after
    ``existing`` was read) is updated, not inserted twice. ``last_seen_at`` is written only with another
    change, or once a minute, so a quiet poll writes (almost) nothing.
    """
    if existing is None:
        existing = {c.name: c for c in Cluster.objects.filter(backend=backend_name)}
    stale = now - timedelta(seconds=60)
    for name, info in clusters.items():
        values = _values(info)
        row = existing.pop(name, None)
        if row is None:
            Cluster.objects.update_or_create(
                backend=backend_name,
                name=name,
                defaults={**values, "last_seen_at": now},
                create_defaults={**values, "launched_at": info.launched_at or now, "last_seen_at": now},
            )
            continue
        if info.launched_at is None:
            values["launched_at"] = row.launched_at
        changed = {k: v for k, v in values.items() if getattr(row, k) != v}
        if changed or row.last_seen_at < stale:
            Cluster.objects.filter(pk=row.pk).update(**changed, last_seen_at=now)
    # What the backend no longer reports is gone.
    if existing:
        Cluster.objects.filter(pk__in=[c.pk for c in existing.values()]).delete()
