"""Celery tasks: the periodic poll, reconcile and log-refresh passes, the on-demand reconcile, notifications."""

import logging
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from clusters.backends import get_backend
from clusters.backends.base import BackendError
from clusters.leases import holder_token, kept_alive
from clusters.models import Cluster, Heartbeat

from . import enqueue, logsync, notify, reconciler
from .models import Experiment, Job
from .observe import poll_all
from .sweeps import waiting_siblings

logger = logging.getLogger(__name__)


def plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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


@contextmanager
def leased(name):
    """Hold the lease ``name`` while the block runs, renewed every few seconds; PollInProgress if it is taken."""
    holder = holder_token()
    seconds = settings.SKYDECK_POLL_LEASE_SECONDS
    if not Heartbeat.try_lease(name, seconds, holder):
        raise PollInProgress(f"another {name} is running")
    try:
        with kept_alive(lambda: Heartbeat.renew(name, seconds, holder), every=seconds / 3):
            yield
    finally:
        Heartbeat.release(name, holder)


def poll_due(now=None):
    """Whether a periodic poll should run now: often while anything is in flight, else at the idle interval.

    A poll rests at least half as long as the last one took (up to the idle interval):
    when the backend answers slowly, for instance a SkyPilot API server on a crowded
    machine, the poller leaves it a third of the time instead of asking again at once and
    making every answer slower still.
    """
    now = now or timezone.now()
    last = Heartbeat.objects.filter(name="poll").values_list("finished_at", "duration").first()
    if last is None or last[0] is None:
        return True
    finished_at, took = last
    age = (now - finished_at).total_seconds()
    if age >= settings.SKYDECK_POLL_INTERVAL:
        return True
    if age < max(settings.SKYDECK_POLL_ACTIVE_INTERVAL * 0.8, (took or 0.0) / 2):
        return False
    return Job.objects.active().exists() or Experiment.objects.exclude(cluster_request_id="").exists()


def run_poll(*, reconcile_inline=True):
    """One poll, then a reconcile of what it changed (so a finished job restarts now, not a pass later).

    The Celery task hands those reconciles to the other worker processes, so the poll
    itself stays short; ``manage.py poll`` runs them inline and prints them.
    """
    with leased("poll"):
        started = timezone.now()
        polls, changed = poll_all(backends_in_use())
        # A sweep child that finished frees a slot: its waiting siblings start now, not a pass later.
        changed |= waiting_siblings(changed)
        summary = "; ".join(p.summary() for p in polls) or "no backend in use"
        Heartbeat.beat("poll", started_at=started, summary=summary, ok=all(p.reachable for p in polls))
    if not reconcile_inline:
        enqueue.reconcile_soon(changed)
        return polls, []
    # This poll is the follow-up of what they do, so they ask for none of their own.
    outcomes = [reconciler.reconcile(pk, follow_up=False) for pk in sorted(changed)]
    if any(o.actions for o in outcomes):
        enqueue.poll_soon()
    return polls, outcomes


def run_reconcile_all():
    started = timezone.now()
    outcomes = reconciler.reconcile_all()
    acted = [o for o in outcomes if o.actions]
    Heartbeat.beat(
        "reconcile",
        started_at=started,
        summary=f"{plural(len(outcomes), 'experiment')} looked at, {len(acted)} acted on",
    )
    return outcomes


def run_log_sync():
    """Refresh the copies of SkyPilot jobs' output: the active ones, and those ended whose copy is not complete."""
    with leased("logs"):
        started = timezone.now()
        refreshed = logsync.refresh_all()
        Heartbeat.beat("logs", started_at=started, summary=refreshed.summary())
        return refreshed


@shared_task(name="experiments.tasks.poll")
def poll(force=False):
    if not force and not poll_due():
        return "skipped: polled recently and nothing is in flight"
    try:
        polls, _ = run_poll(reconcile_inline=False)
    except PollInProgress:
        return "skipped: another poll is running"
    return [p.summary() for p in polls]


@shared_task(name="experiments.tasks.reconcile_all")
def reconcile_all():
    return [str(o) for o in run_reconcile_all()]


@shared_task(name="experiments.tasks.sync_logs")
def sync_logs():
    try:
        return run_log_sync().summary()
    except PollInProgress:
        return "skipped: another log refresh is running"


@shared_task(name="experiments.tasks.reconcile_experiment")
def reconcile_experiment(experiment_id):
    return reconcile_experiments([experiment_id])[0]


@shared_task(name="experiments.tasks.reconcile_experiments")
def reconcile_experiments(experiment_ids):
    """Reconcile a batch (a bulk action, a sweep) in one task; what acted is followed by a poll."""
    existing = set(Experiment.objects.filter(pk__in=experiment_ids).values_list("pk", flat=True))
    return [str(reconciler.reconcile(pk)) if pk in existing else "gone" for pk in experiment_ids]


@shared_task(name="experiments.tasks.cluster_action")
def cluster_action(backend, name, action, username=""):
    """Stop or tear down a cluster no experiment owns (asked from the Clusters page)."""
    logger.info("%s asked to %s cluster %s/%s", username or "someone", action, backend, name)
    impl = get_backend(backend)
    try:
        impl.stop(name) if action == "stop" else impl.down(name)
    except BackendError as exc:
        logger.warning("could not %s %s/%s: %s", action, backend, name, exc.message)
        return f"{action} {name} failed: {exc.message}"
    enqueue.poll_soon()
    return f"{action} {name} requested"


@shared_task(name="experiments.tasks.notify", ignore_result=True)
def notify_subscribers(event_id):
    """One Notification per subscription the event concerns, each delivered by a task of its own."""
    for pk in notify.fan_out(event_id):
        enqueue.send("experiments.tasks.deliver_notification", (pk,))


@shared_task(bind=True, name="experiments.tasks.deliver_notification", ignore_result=True)
def deliver_notification(self, notification_id):
    """Send one notification; a service that fails is tried again later, with backoff, a few times."""
    retries = settings.SKYDECK_NOTIFY_RETRIES
    try:
        notify.deliver(notification_id, last_try=self.request.retries >= retries)
    except notify.DeliveryFailed as exc:
        if self.request.retries >= retries:
            return f"gave up: {exc}"
        countdown = settings.SKYDECK_NOTIFY_RETRY_SECONDS * 2**self.request.retries
        raise self.retry(exc=exc, countdown=countdown, max_retries=retries) from None
    return "sent"
