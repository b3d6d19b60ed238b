"""What actually runs: clusters as the backends report them, and the health of
the loops and backends that report them. Nothing here decides anything."""

from datetime import timedelta

from django.db import models
from django.utils import timezone

from .leases import holder_gone

OWNED_PREFIX = "sd-"


class Backend(models.TextChoices):
    SKYPILOT = "skypilot", "SkyPilot"
    LOCAL = "local", "Local"


class ClusterStatus(models.TextChoices):
    INIT = "INIT", "Init"
    UP = "UP", "Up"
    STOPPED = "STOPPED", "Stopped"


class ClusterQuerySet(models.QuerySet):
    def owned(self):
        return self.filter(name__startswith=OWNED_PREFIX)

    def up(self):
        return self.filter(status=ClusterStatus.UP)


class Cluster(models.Model):
    name = models.CharField(max_length=200)
    backend = models.CharField(max_length=20, choices=Backend.choices)
    status = models.CharField(max_length=20, choices=ClusterStatus.choices)
    resources = models.CharField(max_length=300, blank=True, help_text="Resources as the backend describes them")
    num_nodes = models.PositiveIntegerField(default=1)
    infra = models.CharField(max_length=200, blank=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(default=timezone.now)
    autostop = models.IntegerField(null=True, blank=True, help_text="Idle minutes before autostop; empty when off")
    hourly_cost = models.FloatField(null=True, blank=True)
    total_cost = models.FloatField(null=True, blank=True)
    status_message = models.TextField(blank=True)

    objects = ClusterQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["backend", "name"], name="unique_cluster_per_backend")]

    def __str__(self):
        return f"{self.name} ({self.backend})"

    @property
    def owned(self):
        return self.name.startswith(OWNED_PREFIX)


class BackendHealth(models.Model):
    """Whether a backend answered the last poll, and when to ask it again."""

    backend = models.CharField(max_length=20, choices=Backend.choices, unique=True)
    reachable = models.BooleanField(default=True)
    unreachable_since = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_ok_at = models.DateTimeField(null=True, blank=True)
    last_calls = models.PositiveIntegerField(default=0, help_text="Backend calls made by the last poll")
    # What the backend says about itself: for SkyPilot, which API server, whether SkyDeck started it, which infra.
    details = models.JSONField(default=dict, blank=True)

    def __str__(self):
        return f"{self.backend}: {'reachable' if self.reachable else 'unreachable'}"


class Heartbeat(models.Model):
    """The last run of a control loop (poll, reconcile): when, how long, what it did."""

    name = models.CharField(max_length=40, unique=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration = models.FloatField(null=True, blank=True, help_text="Seconds")
    summary = models.TextField(blank=True)
    ok = models.BooleanField(default=True)
    # Held while a run is in progress, so two workers never poll at once; renewed while it works.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_holder = models.CharField(max_length=80, blank=True)

    def __str__(self):
        return self.name

    @classmethod
    def try_lease(cls, name, seconds, holder):
        """Compare-and-swap: True if ``holder`` may run ``name`` now.

        Free, expired, or held by a process of this host that is gone: taken.
        """
        now = timezone.now()
        row, _ = cls.objects.get_or_create(name=name)
        free = models.Q(lease_until__isnull=True) | models.Q(lease_until__lt=now) | models.Q(lease_holder=holder)
        if row.lease_holder and row.lease_holder != holder and holder_gone(row.lease_holder):
            free |= models.Q(lease_holder=row.lease_holder)
        return (
            cls.objects.filter(name=name)
            .filter(free)
            .update(lease_until=now + timedelta(seconds=seconds), lease_holder=holder)
            == 1
        )

    @classmethod
    def renew(cls, name, seconds, holder):
        """Extend the lease, if ``holder`` still holds it."""
        until = timezone.now() + timedelta(seconds=seconds)
        return cls.objects.filter(name=name, lease_holder=holder).update(lease_until=until) == 1

    @classmethod
    def release(cls, name, holder):
        """Give the lease back: only its holder can."""
        cls.objects.filter(name=name, lease_holder=holder).update(lease_until=None, lease_holder="")

    @classmethod
    def beat(cls, name, *, started_at, summary="", ok=True):
        now = timezone.now()
        cls.objects.update_or_create(
            name=name,
            defaults={
                "started_at": started_at,
                "finished_at": now,
                "duration": (now - started_at).total_seconds(),
                "summary": summary[:2000],
                "ok": ok,
            },
        )

    def is_late(self, interval_seconds):
        """Late when two intervals (plus slack) passed without a run."""
        if self.finished_at is None:
            return True
        return timezone.now() - self.finished_at > timedelta(seconds=2 * interval_seconds + 15)
