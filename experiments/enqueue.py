"""Work for the Celery worker, sent once the current transaction commits.

Tasks are named, not imported: ``experiments.tasks`` imports the reconciler,
and the reconciler changes intent (budgets, the watchdog) through
``experiments.intent``, which enqueues through here. Sending by name keeps the
import graph one-way.
"""

import logging
import threading
from contextlib import contextmanager

from celery import current_app
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

# Reconciles requested together (a bulk action, a sweep) go in batches: few
# messages for the broker, and both worker processes still get work.
BATCH = 20


def send(name, args=(), kwargs=None, **options):
    """Send task ``name`` now; a broker that is down is logged, and beat's periodic pass heals it."""
    try:
        current_app.signature(name, args=args, kwargs=kwargs or {}).apply_async(**options)
    except Exception:  # noqa: BLE001 - an unreachable broker must never fail the user's change
        logger.warning("could not enqueue %s%r", name, args, exc_info=True)
        return False
    return True


_local = threading.local()


def _send_reconciles(ids):
    if len(ids) == 1:
        send("experiments.tasks.reconcile_experiment", (ids[0],))
        return
    for start in range(0, len(ids), BATCH):
        send("experiments.tasks.reconcile_experiments", (ids[start : start + BATCH],))


def reconcile_soon(experiment_ids):
    """Reconcile these experiments as soon as the transaction commits."""
    ids = {int(pk) for pk in experiment_ids}
    if not ids:
        return
    pending = getattr(_local, "batch", None)
    if pending is not None:
        pending.update(ids)
        return
    transaction.on_commit(lambda: _send_reconciles(sorted(ids)))


@contextmanager
def batched():
    """Collect the reconciles asked for in this block and send them together, in batches, on commit."""
    if getattr(_local, "batch", None) is not None:
        yield  # an outer block collects
        return
    _local.batch = set()
    try:
        yield
    except BaseException:
        _local.batch = None
        raise
    ids, _local.batch = sorted(_local.batch), None
    if ids:
        transaction.on_commit(lambda: _send_reconciles(ids))


# After an action, look again soon rather than at the next periodic poll,
# so a launch shows as RUNNING (or failed) in seconds.
POLL_SOON_SECONDS = 3


def poll_soon(countdown=POLL_SOON_SECONDS):
    """A poll in a few seconds, whatever the periodic cadence; useless once older than the idle interval."""
    send(
        "experiments.tasks.poll",
        kwargs={"force": True},
        countdown=countdown,
        expires=countdown + settings.SKYDECK_POLL_INTERVAL,
    )


def notify(event_id):
    """Tell the subscribers of this event, once the transaction that recorded it commits."""
    transaction.on_commit(lambda: send("experiments.tasks.notify", (event_id,)))
