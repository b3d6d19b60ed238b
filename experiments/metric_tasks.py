"""The worker's metrics pass: beat's ``parse-metrics`` reads what jobs printed since the last pass.

One pass at a time (a lease, like the poll's), over the active jobs, the ended ones whose
output was not read to its end yet (the final pass of a job that ended), and new ones.
"""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from clusters.leases import holder_token, kept_alive
from clusters.models import Heartbeat

from . import metrics

LEASE = "metrics"


class PassInProgress(Exception):
    """Another worker is reading metrics right now."""


def run_parse_metrics():
    """One pass, recorded as the ``metrics`` heartbeat; PassInProgress if another one runs."""
    holder = holder_token()
    seconds = settings.SKYDECK_POLL_LEASE_SECONDS
    if not Heartbeat.try_lease(LEASE, seconds, holder):
        raise PassInProgress("another metrics pass is running")
    try:
        with kept_alive(lambda: Heartbeat.renew(LEASE, seconds, holder), every=seconds / 3):
            started = timezone.now()
            parsed = metrics.parse_all(now=started)
            Heartbeat.beat(LEASE, started_at=started, summary=parsed.summary(), ok=not parsed.failed)
            return parsed
    finally:
        Heartbeat.release(LEASE, holder)


@shared_task(name="experiments.tasks.parse_metrics")
def parse_metrics():
    try:
        return run_parse_metrics().summary()
    except PassInProgress:
        return "skipped: another metrics pass is running"
