"""The worker keeps the copies of SkyPilot jobs' output current; the web only reads them.

Every few seconds (beat's ``sync-logs``) the copy of each SkyPilot job someone is
reading (its page or the API asked for it in the last half minute) is refreshed
with what the job printed since the last time (the backend fetches only that, see
``SkyPilotBackend.sync_log``), a bounded number at once; the copies of the other
running jobs every ``SKYDECK_LOG_SYNC_IDLE_INTERVAL`` seconds. A job that has ended
gets a last refresh, after which its copy is complete and is never fetched again:
when its cluster is gone, the copy is what remains.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from clusters.backends import get_backend
from clusters.backends.base import BackendError

from . import logs
from .models import ACTIVE_JOB_STATUSES, LOG_COMPLETE_WITHIN, Job, JobStatus

logger = logging.getLogger(__name__)


@dataclass
class Refreshed:
    jobs: int = 0
    added: int = 0  # bytes appended to copies
    fetched: int = 0  # bytes the backend sent
    completed: int = 0
    failed: list = field(default_factory=list)

    def summary(self):
        text = f"{self.jobs} log copies refreshed, {self.added} bytes new, {self.fetched} bytes fetched"
        if self.completed:
            text += f", {self.completed} completed"
        if self.failed:
            text += f"; failed: {', '.join(self.failed[:5])}"
        return text


def jobs_to_refresh(backend_name, now=None):
    """Jobs whose copy may be behind: running ones, and ended ones whose copy is not complete yet."""
    now = now or timezone.now()
    return (
        Job.objects.filter(backend=backend_name, log_complete=False)
        .exclude(sky_job_id=None)
        .exclude(log_path="")
        .filter(
            Q(status__in=[s for s in ACTIVE_JOB_STATUSES if s != JobStatus.LAUNCHING])
            | Q(ended_at__gte=now - LOG_COMPLETE_WITHIN, status__in=_ended())
        )
        .exclude(cluster_name="")
        .order_by("pk")
    )


def _ended():
    return [s for s in JobStatus.values if s not in ACTIVE_JOB_STATUSES]


def refresh(backend, job):
    """One job's copy brought up to date; records when it is complete and the exit codes it shows."""
    synced = backend.sync_log(job.cluster_name, job.sky_job_id, job.log_path)
    logs.mark_checked(job.log_path)
    if synced.finished:
        update = {"log_complete": True}
        if synced.exit_codes and not job.exit_codes:
            update["exit_codes"] = synced.exit_codes
            update["exit_code"] = next((c for c in synced.exit_codes if c != 0), 0)
        Job.objects.filter(pk=job.pk).update(**update)
    return synced


WATCHED_WITHIN = timedelta(seconds=30)


def due(job, now):
    """Watched, ended (its last refresh), or not refreshed for the idle interval."""
    if job.status not in ACTIVE_JOB_STATUSES:
        return True
    if job.log_watched_at is not None and now - job.log_watched_at <= WATCHED_WITHIN:
        return True
    try:
        # The marker a successful refresh touches: a silent job's copy does not change, its marker does.
        age = now.timestamp() - logs.checked_path(job.log_path).stat().st_mtime
    except OSError:
        return True  # never refreshed yet
    return age >= settings.SKYDECK_LOG_SYNC_IDLE_INTERVAL


def refresh_all():
    result = Refreshed()
    now = timezone.now()
    for name in settings.SKYDECK_BACKENDS:
        backend = get_backend(name)
        if not hasattr(backend, "sync_log"):
            continue  # the local backend's jobs write their copy themselves
        jobs = [job for job in jobs_to_refresh(name, now) if due(job, now)]
        if not jobs:
            continue

        def one(job, backend=backend):
            try:
                return job, refresh(backend, job), None
            except BackendError as exc:
                return job, None, exc

        with ThreadPoolExecutor(max_workers=settings.SKYDECK_LOG_SYNC_CONCURRENCY) as pool:
            for job, synced, error in pool.map(one, jobs):
                result.jobs += 1
                if error is not None:
                    result.failed.append(f"{job.name} ({error.reason})")
                    if job.status not in ACTIVE_JOB_STATUSES and error.reason in ("ClusterGone", "ClusterNotUp"):
                        # Nothing left to fetch: the copy is all there is.
                        Job.objects.filter(pk=job.pk).update(log_complete=True)
                    continue
                result.added += synced.added
                result.fetched += synced.fetched
                result.completed += int(synced.finished)
    return result
