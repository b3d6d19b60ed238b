"""Celery tasks: the periodic poll and reconcile passes, and the on-demand reconcile."""

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from clusters.models import Cluster, Heartbeat

from . import reconciler
from .models import Experiment
from .observe import poll_all
from .sweeps import waiting_siblings

logger = logging.getLogger(__name__)


def backends_in_use():
    """Backends worth asking: enabled, and used by an experiment or a known cluster.

    Polling SkyPilot starts its API server; a SkyDeck that only runs local
    experiments should not pay for that.
    """
    used = set(Experiment.objects.values_list("backend", flat=True).distinct())
    used |= set(Cluster.objects.values_list("backend", flat=True).distinct())
    return [b for b in settings.SKYDECK_BACKENDS if b in used]


class PollInProgress(Exception):
    """Another worker is polling right now; one poll at a time is enough."""


def run_poll():
    # The lease outlives a stuck poll by a few intervals, then another may take over.
    if not Heartbeat.try_lease("poll", seconds=max(120.0, 4 * settings.SKYDECK_POLL_INTERVAL)):
        raise PollInProgress("another poll is running")
    try:
        started = timezone.now()
        polls, changed = poll_all(backends_in_use())
        # A sweep child that finished frees a slot: its waiting siblings start now, not a pass later.
        changed |= waiting_siblings(changed)
        outcomes = [reconciler.reconcile(pk) for pk in sorted(changed)]
        summary = "; ".join(p.summary() for p in polls) or "no backend in use"
        Heartbeat.beat("poll", started_at=started, summary=summary, ok=all(p.reachable for p in polls))
        return polls, outcomes
    finally:
        Heartbeat.release("poll")


def run_reconcile_all():
    started = timezone.now()
    outcomes = reconciler.reconcile_all()
    acted = [o for o in outcomes if o.actions]
    Heartbeat.beat("reconcile", started_at=started, summary=f"{len(outcomes)} experiments checked, {len(acted)} acted on")
    return outcomes


@shared_task(name="experiments.tasks.poll")
def poll():
    try:
        polls, outcomes = run_poll()
    except PollInProgress:
        return "skipped: another poll is running"
    return [p.summary() for p in polls]


@shared_task(name="experiments.tasks.reconcile_all")
def reconcile_all():
    return [str(o) for o in run_reconcile_all()]


# After an action, look again soon rather than at the next periodic poll,
# so a launch shows as RUNNING (or failed) in seconds.
POLL_SOON_SECONDS = 3


@shared_task(name="experiments.tasks.reconcile_experiment")
def reconcile_experiment(experiment_id):
    if not Experiment.objects.filter(pk=experiment_id).exists():
        return "gone"
    outcome = reconciler.reconcile(experiment_id)
    if outcome.actions:
        poll.apply_async(countdown=POLL_SOON_SECONDS, expires=settings.SKYDECK_POLL_INTERVAL)
    return str(outcome)
