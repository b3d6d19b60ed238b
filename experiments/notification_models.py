"""Who is told about what: a user's subscriptions, and one Notification per event and subscription.

Imported by ``experiments.models`` (Django finds models there); see ``experiments.notify``
for how events become notifications and how they are delivered.
"""

import re
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .validators import is_email, target_problem


class Topic(models.TextChoices):
    """The events a researcher cares about (``Event.data["notify"]``)."""

    JOB_FAILED = "job_failed", "A job failed"
    GAVE_UP = "gave_up", "An experiment gave up"
    SUCCEEDED = "succeeded", "A run succeeded"
    SWEEP_FINISHED = "sweep_finished", "A sweep finished"
    GUARDRAIL = "guardrail", "A budget, runtime limit or the stall watchdog acted"
    BACKEND_UNREACHABLE = "backend_unreachable", "A backend became unreachable"


DEFAULT_TOPICS = [Topic.JOB_FAILED, Topic.GAVE_UP, Topic.SWEEP_FINISHED, Topic.GUARDRAIL, Topic.BACKEND_UNREACHABLE]


def validate_target(value):
    """An email address, or a notification URL a library of many services understands (apprise)."""
    problem = target_problem(value)
    if problem:
        raise ValidationError(problem)


_SECRET_PATH = re.compile(r"/[^/]{12,}")


def redact(target):
    """The target as shown on pages: no password, no long tokens in the path."""
    if is_email(target) or "://" not in target:
        return target
    parts = urlsplit(target)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "…@" + netloc
    path = _SECRET_PATH.sub("/…", parts.path)
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def validate_topics(value):
    if not isinstance(value, list) or not value:
        raise ValidationError("Choose at least one kind of event.")
    unknown = [t for t in value if t not in Topic.values]
    if unknown:
        raise ValidationError(f"Unknown kinds of event: {', '.join(map(str, unknown))}.")


class Subscription(models.Model):
    """Tell ``target`` about events of one experiment, one sweep, or (neither) all the user owns."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="subscriptions")
    target = models.CharField(
        max_length=1000,
        validators=[validate_target],
        help_text="An email address, or a URL such as slack://…, discord://…, json://host/path (a JSON webhook), "
        "mailto://…",
    )
    topics = models.JSONField(
        default=list,
        validators=[validate_topics],
        error_messages={"blank": "Choose at least one kind of event."},
        help_text="Which events",
    )
    experiment = models.ForeignKey(
        "experiments.Experiment", null=True, blank=True, on_delete=models.CASCADE, related_name="subscriptions"
    )
    sweep = models.ForeignKey(
        "experiments.Sweep", null=True, blank=True, on_delete=models.CASCADE, related_name="subscriptions"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(experiment__isnull=True) | models.Q(sweep__isnull=True),
                name="subscription_one_scope",
            )
        ]

    def __str__(self):
        return f"{self.user} → {self.display_target} ({self.scope})"

    def clean(self):
        super().clean()
        if self.experiment_id and self.sweep_id:
            raise ValidationError("One experiment or one sweep, not both.")

    @property
    def scope(self):
        if self.experiment_id:
            return f"experiment {self.experiment.name}"
        if self.sweep_id:
            return f"sweep {self.sweep.name}"
        return "all experiments they own"

    @property
    def display_target(self):
        """The target without its secrets (tokens in a URL's path or user part)."""
        return redact(self.target)


class Notification(models.Model):
    """One event told to one subscription: created once (unique), delivered by a retried task."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="notifications")
    event = models.ForeignKey("experiments.Event", on_delete=models.CASCADE, related_name="notifications")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["subscription", "event"], name="one_notification_per_event")]

    def __str__(self):
        return f"{self.event_id} → {self.subscription_id}: {self.status}"
