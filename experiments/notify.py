"""Telling researchers what happened: subscriptions, one Notification per event, delivery.

An Event recorded with ``data["notify"]`` set to a topic (a job failed, an experiment
gave up, a run succeeded, a sweep finished, a guardrail acted, a backend became
unreachable) is handed to the ``experiments.tasks.notify`` task once its transaction
commits. That task finds the subscriptions it concerns and creates one Notification
for each (unique per event and subscription: an event is told once, however often the
task runs), then hands each to ``experiments.tasks.deliver_notification``, which sends
it and is retried with backoff when the service fails. The control loop only ever
enqueues: a slow or failing service never delays a reconcile, and never changes an
experiment.

A target is an email address (sent with Django's email) or a URL that apprise
understands: ``slack://``, ``discord://``, ``mailto://``, ``json://host/path`` (a JSON
webhook) and many more.
"""

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .models import Event, Notification, Subscription, Sweep
from .notification_models import Topic, redact
from .validators import is_email

logger = logging.getLogger(__name__)

MAX_ERROR = 2000


class DeliveryFailed(Exception):
    """The service did not take the notification (worth another try)."""


# --- from events to notifications ---------------------------------------------------


def topic_of(event):
    return (event.data or {}).get("notify", "")


def subscriptions_for(event):
    """The enabled subscriptions an event concerns."""
    topic = topic_of(event)
    if not topic:
        return []
    experiment = event.experiment
    if experiment is None:
        scope = Q(experiment__isnull=True, sweep__isnull=True)
    else:
        scope = Q(experiment=experiment) | Q(experiment__isnull=True, sweep__isnull=True, user_id=experiment.owner_id)
        sweep_id = (event.data or {}).get("sweep") or experiment.sweep_id
        if sweep_id:
            scope |= Q(sweep_id=sweep_id)
            owner = Sweep.objects.filter(pk=sweep_id).values_list("owner_id", flat=True).first()
            if topic == "sweep_finished" and owner:
                scope |= Q(experiment__isnull=True, sweep__isnull=True, user_id=owner)
    candidates = Subscription.objects.filter(enabled=True).filter(scope).select_related("user")
    # Topics are a short JSON list: filtered here, the same on every database.
    return [s for s in candidates if topic in (s.topics or []) and s.user.is_active]


def fan_out(event_id):
    """One Notification per subscription the event concerns (never two); returns the new ones' ids."""
    event = Event.objects.select_related("experiment", "experiment__sweep").filter(pk=event_id).first()
    if event is None:
        return []
    created = []
    for subscription in subscriptions_for(event):
        try:
            with transaction.atomic():
                created.append(Notification.objects.create(subscription=subscription, event=event).pk)
        except IntegrityError:
            continue  # told already (the task ran twice)
    return created


def message_of(event):
    """(title, body) for an event."""
    topic = topic_of(event)
    label = Topic(topic).label if topic in Topic.values else "SkyDeck"
    name = event.experiment.name if event.experiment_id else ""
    title = f"SkyDeck: {label}" + (f" — {name}" if name else "")
    body = f"{name}: {event.message}" if name else event.message
    base = settings.SKYDECK_BASE_URL.rstrip("/")
    if base and event.experiment_id:
        body += f"\n{base}{event.experiment.get_absolute_url()}"
    return title, body


# --- delivery -------------------------------------------------------------------------


def send(target, title, body):
    """Send one message; DeliveryFailed when the service does not take it."""
    if is_email(target):
        try:
            send_mail(title, body, None, [target])
        except Exception as exc:  # noqa: BLE001 - SMTP errors are many
            raise DeliveryFailed(f"email to {target}: {exc}") from exc
        return
    import apprise

    box = apprise.Apprise()
    if not box.add(target):
        raise DeliveryFailed(f"{redact(target)} is not a notification URL apprise understands")
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = box.notify(title=title, body=body)
    if not ok:
        detail = " ".join(captured.getvalue().split())[:MAX_ERROR] or "the service did not take it"
        raise DeliveryFailed(f"{redact(target)}: {detail}")


def deliver(notification_id, *, last_try=False):
    """Send one notification unless sent already; True when sent now.

    On failure the attempt and its error are recorded and DeliveryFailed is raised
    for the task to retry; on the last try the notification is marked failed.
    """
    notification = (
        Notification.objects.select_related("subscription", "event", "event__experiment")
        .filter(pk=notification_id)
        .first()
    )
    if notification is None or notification.status == Notification.Status.SENT:
        return False
    if not notification.subscription.enabled:
        return False
    title, body = message_of(notification.event)
    rows = Notification.objects.filter(pk=notification.pk)
    try:
        send(notification.subscription.target, title, body)
    except DeliveryFailed as exc:
        rows.update(
            attempts=notification.attempts + 1,
            last_error=str(exc)[:MAX_ERROR],
            status=Notification.Status.FAILED if last_try else Notification.Status.PENDING,
        )
        logger.info("notification %s not delivered (attempt %s): %s", notification.pk, notification.attempts + 1, exc)
        raise
    rows.update(
        attempts=notification.attempts + 1, status=Notification.Status.SENT, sent_at=timezone.now(), last_error=""
    )
    return True


def send_test(subscription):
    """Send a test message now, in the request (the user asked for it and waits for the answer)."""
    send(
        subscription.target,
        "SkyDeck: test notification",
        f"This is how SkyDeck will tell you about {subscription.scope}.",
    )
