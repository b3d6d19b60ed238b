"""The user's intent (Experiment, Sweep, FlagSchema) and its history (Job, Event).

The models hold data and the queries that recur; they change nothing on their
own. Every change of intent goes through ``experiments.intent``; status columns
are written only by the reconciler and the poller.
"""

import hashlib
import json
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import connection, models
from django.db.models import Case, IntegerField, Q, Value, When
from django.db.models.expressions import RawSQL
from django.urls import reverse
from django.utils import timezone

from clusters.models import OWNED_PREFIX, Backend

from .validators import (
    FLAG_KEY_MAX,
    FLAG_KEY_RE,
    FlagType,
    FlagValueError,
    coerce_flag,
    name_validator,
    storable_text,
    validate_envs,
    validate_flag_dict,
    validate_not_reserved,
    validate_sweep,
    validate_tags,
)


class DesiredState(models.TextChoices):
    RUNNING = "RUNNING", "Running"
    STOPPED = "STOPPED", "Stopped"
    TERMINATED = "TERMINATED", "Terminated"


class RestartPolicy(models.TextChoices):
    NEVER = "never", "Never"
    ON_FAILURE = "on_failure", "On failure"
    ALWAYS = "always", "Always"


class LimitAction(models.TextChoices):
    STOPPED = "STOPPED", "Stop it (keep the cluster's disk)"
    TERMINATED = "TERMINATED", "Terminate it (tear the cluster down)"


class StallAction(models.TextChoices):
    RESTART = "restart", "Restart the job (an infrastructure failure)"
    FLAG = "flag", "Only flag it"


class FlagStyle(models.TextChoices):
    PLAIN = "plain", "key=value"
    DASHDASH = "dashdash", "--key=value"


class JobStatus(models.TextChoices):
    LAUNCHING = "LAUNCHING", "Launching"
    PENDING = "PENDING", "Pending"
    SETTING_UP = "SETTING_UP", "Setting up"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"
    FAILED_SETUP = "FAILED_SETUP", "Failed in setup"
    FAILED_DRIVER = "FAILED_DRIVER", "Failed (driver)"
    FAILED_LAUNCH = "FAILED_LAUNCH", "Failed to launch"
    CANCELLED = "CANCELLED", "Cancelled"
    LOST = "LOST", "Lost"


# An ended job's output copy is completed within this long, or left as it is.
LOG_COMPLETE_WITHIN = timedelta(hours=6)
# A reader of a log marks it watched at most this often.
WATCH_WRITE_EVERY = timedelta(seconds=10)

ACTIVE_JOB_STATUSES = (JobStatus.LAUNCHING, JobStatus.PENDING, JobStatus.SETTING_UP, JobStatus.RUNNING)
FAILED_JOB_STATUSES = (
    JobStatus.FAILED,
    JobStatus.FAILED_SETUP,
    JobStatus.FAILED_DRIVER,
    JobStatus.FAILED_LAUNCH,
    JobStatus.LOST,
)


class FailureKind(models.TextChoices):
    NONE = "none", "None"
    USER = "user", "User"
    INFRA = "infra", "Infrastructure"


class Phase(models.TextChoices):
    """What the experiment is doing, derived for display."""

    PENDING = "PENDING", "Pending"
    LAUNCHING = "LAUNCHING", "Launching"
    RUNNING = "RUNNING", "Running"
    SUCCEEDED = "SUCCEEDED", "Succeeded"
    FAILED = "FAILED", "Failed"
    BACKOFF = "BACKOFF", "Backing off"
    STOPPING = "STOPPING", "Stopping"
    STOPPED = "STOPPED", "Stopped"
    TERMINATING = "TERMINATING", "Terminating"
    TERMINATED = "TERMINATED", "Terminated"
    ERROR = "ERROR", "Error"


# Changing any of these is a spec change: it bumps `generation`.
SPEC_FIELDS = (
    "command",
    "flags",
    "flag_style",
    "accelerators",
    "num_nodes",
    "cpus",
    "memory",
    "infra",
    "use_spot",
    "disk_size",
    "image_id",
    "setup",
    "envs",
    "workdir",
    "autostop_minutes",
    "keep_cluster_up",
    "managed",
    "backend",
)


def default_backend():
    return settings.SKYDECK_DEFAULT_BACKEND


class ExperimentQuerySet(models.QuerySet):
    def active(self):
        """Experiments with a job in flight."""
        return self.filter(jobs__status__in=ACTIVE_JOB_STATUSES).distinct()

    def needing_reconcile(self):
        """Where what the user wants and what was last seen may differ.

        Finished RUNNING experiments with nothing left to do stay out, except
        when a spec change, a restart or a retry asks for attention.
        """
        now = timezone.now()
        settled = (
            Q(desired_state=DesiredState.RUNNING, phase__in=[Phase.SUCCEEDED, Phase.FAILED])
            | Q(desired_state=DesiredState.STOPPED, phase=Phase.STOPPED)
            | Q(desired_state=DesiredState.TERMINATED, phase=Phase.TERMINATED)
        )
        backing_off = Q(desired_state=DesiredState.RUNNING, next_attempt_at__gt=now)
        idle_due = Q(cluster_idle_until__lte=now)
        return self.filter(~(settled & Q(reconciled_run=models.F("run_number"))) & ~backing_off | idle_due)

    def tagged(self, tag):
        if connection.features.supports_json_field_contains:
            return self.filter(tags__contains=[tag])
        # SQLite: no JSON containment operator, so ask json_each.
        table = self.model._meta.db_table
        return self.filter(
            pk__in=RawSQL(
                f'SELECT "{table}"."id" FROM "{table}", json_each("{table}"."tags") WHERE json_each.value = %s', (tag,)
            )
        )

    def owned_by(self, user):
        return self.filter(owner=user)

    def names_like(self, base):
        """The names taken among those starting with ``base``: what a new name must avoid."""
        return set(self.filter(name__startswith=base).values_list("name", flat=True))


class Sweep(models.Model):
    class Kind(models.TextChoices):
        GRID = "grid", "Grid"
        RANDOM = "random", "Random"

    name = models.SlugField(max_length=60, unique=True, validators=[name_validator, validate_not_reserved])
    description = models.TextField(blank=True)
    base = models.ForeignKey(
        "Experiment", null=True, blank=True, on_delete=models.SET_NULL, related_name="sweeps_based_on"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.GRID)
    parameters = models.JSONField(default=dict, blank=True, help_text="flag path -> list of values, or {min, max, log}")
    samples = models.PositiveIntegerField(null=True, blank=True)
    seed = models.IntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many of the sweep's experiments run at once"
    )
    max_cost = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01)],
        verbose_name="budget ($)",
        help_text="Stop every experiment of the sweep once their jobs together have cost this much, in $",
    )
    limit_action = models.CharField(
        max_length=12,
        choices=LimitAction.choices,
        default=LimitAction.STOPPED,
        help_text="What the sweep's experiments are set to when the budget is reached",
    )
    # When all its experiments had settled (nothing running or to start); cleared when one starts again.
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_sweeps",
        help_text="May change it, with the members of its group and staff",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.SET_NULL, help_text="Its members may change it too"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["-created_at", "-id"], name="sweep_newest")]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("experiments:sweep_detail", args=[self.name])

    def spent(self):
        """What the jobs of all its experiments have cost, in $."""
        return Job.objects.filter(experiment__sweep=self).aggregate(total=models.Sum("cost"))["total"] or 0.0

    def clean(self):
        super().clean()
        validate_sweep(self.kind, self.parameters, self.samples)


class Experiment(models.Model):
    # --- spec -------------------------------------------------------------
    name = models.SlugField(max_length=60, unique=True, validators=[name_validator, validate_not_reserved])
    description = models.TextField(blank=True)
    command = models.TextField(help_text="The base command; flags are appended as key=value arguments")
    flags = models.JSONField(default=dict, blank=True, validators=[validate_flag_dict])
    flag_style = models.CharField(max_length=10, choices=FlagStyle.choices, default=FlagStyle.PLAIN)
    accelerators = models.CharField(max_length=100, blank=True, help_text="e.g. H100:8 or A100:1")
    num_nodes = models.PositiveIntegerField(default=1)
    cpus = models.CharField(max_length=20, blank=True, help_text="e.g. 4 or 4+")
    memory = models.CharField(max_length=20, blank=True, help_text="GiB, e.g. 16 or 16+")
    infra = models.CharField(
        max_length=200, blank=True, help_text="cloud/region/zone, e.g. aws/us-east-1, or slurm, k8s"
    )
    use_spot = models.BooleanField(default=False)
    disk_size = models.PositiveIntegerField(null=True, blank=True, help_text="GiB")
    image_id = models.CharField(max_length=300, blank=True)
    setup = models.TextField(blank=True)
    envs = models.JSONField(default=dict, blank=True, validators=[validate_envs])
    workdir = models.CharField(max_length=500, blank=True)
    autostop_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Stop the cluster (tear it down where the infra cannot stop) after this many idle minutes; "
        "empty: the default",
    )
    keep_cluster_up = models.BooleanField(default=False, help_text="Never stop or tear down the cluster when idle")
    managed = models.BooleanField(
        default=False, help_text="Run as a SkyPilot managed job (SkyPilot recovers spot preemptions)"
    )
    backend = models.CharField(max_length=20, choices=Backend.choices, default=default_backend)
    restart_policy = models.CharField(max_length=20, choices=RestartPolicy.choices, default=RestartPolicy.NEVER)
    max_restarts = models.PositiveIntegerField(default=3)
    # --- guardrails: inputs to plan() ------------------------------------------
    max_cost = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01)],
        verbose_name="budget ($)",
        help_text="Stop once its jobs have cost this much, in $, over all attempts and restarts",
    )
    max_runtime_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        verbose_name="runtime limit (minutes)",
        help_text="Stop a run after this many minutes of wall time, its restarts included",
    )
    limit_action = models.CharField(
        max_length=12,
        choices=LimitAction.choices,
        default=LimitAction.STOPPED,
        help_text="What the desired state becomes when the budget or the runtime limit is reached",
    )
    stall_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="stall watchdog (minutes)",
        help_text="Act when a running job prints nothing for this many minutes; empty: the default, 0: off",
    )
    stall_action = models.CharField(
        max_length=10,
        choices=StallAction.choices,
        default=StallAction.RESTART,
        help_text="What the watchdog does with a silent job",
    )
    tags = models.JSONField(default=list, blank=True, validators=[validate_tags])
    sweep = models.ForeignKey(Sweep, null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments")
    starred = models.BooleanField(default=False)
    desired_state = models.CharField(max_length=20, choices=DesiredState.choices, default=DesiredState.STOPPED)

    # --- bookkeeping: bumped by experiments.intent, never by save() ------------
    generation = models.PositiveIntegerField(default=1, help_text="Bumped by every spec change")
    # Bumped each time the user asks for a fresh run (set RUNNING, or restart).
    run_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # Who may change, run, stop and delete it: its owner, the members of its group, and staff.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_experiments",
        help_text="May change, run, stop and delete it, with the members of its group and staff",
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.SET_NULL, help_text="Its members may change it too"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # --- status: written only by the reconciler and poller ---------------------
    observed_generation = models.PositiveIntegerField(default=0)
    reconciled_run = models.PositiveIntegerField(default=0)
    phase = models.CharField(max_length=20, choices=Phase.choices, default=Phase.PENDING)
    status_reason = models.CharField(max_length=60, blank=True)
    status_message = models.TextField(blank=True)
    failure_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)
    # A cluster-level request in flight (start, stop, down) that the poller resolves.
    cluster_request_id = models.CharField(max_length=200, blank=True)
    cluster_request_kind = models.CharField(max_length=10, blank=True)
    claimed_by = models.CharField(max_length=80, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    # When the finished run's idle cluster is due to be stopped (or torn down); the reconciler looks then.
    cluster_idle_until = models.DateTimeField(null=True, blank=True)
    # A guardrail that set the desired state (BudgetExceeded, RuntimeLimitReached), and its figures;
    # cleared by the next change of desired state a user makes.
    halt_reason = models.CharField(max_length=40, blank=True)
    halt_message = models.TextField(blank=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # One index per order the list offers (experiments.filters.SORTS) and per filter that narrows
        # it; search and tags have PostgreSQL-only indexes of their own (migration 0008).
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="experiment_newest"),
            models.Index(fields=["-updated_at", "-id"], name="experiment_changed"),
            models.Index(fields=["owner", "-created_at", "-id"], name="experiment_owner_newest"),
            models.Index(fields=["phase", "name"], name="experiment_phase_name"),
            models.Index(fields=["desired_state", "name"], name="experiment_desired_name"),
            models.Index(fields=["backend", "name"], name="experiment_backend_name"),
            models.Index(fields=["desired_state", "phase"]),
            models.Index(fields=["starred", "-created_at", "-id"], name="experiment_starred_newest"),
        ]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("experiments:detail", args=[self.name])

    def clean(self):
        """Flags checked and coerced against their schemas: the form, the admin and the API all pass here."""
        super().clean()
        if self.backend == Backend.LOCAL:
            errors = {}
            if self.managed:
                errors["managed"] = "Managed jobs need the SkyPilot backend."
            if (self.num_nodes or 1) != 1:
                errors["num_nodes"] = "The local backend runs on one node."
            if errors:
                raise ValidationError(errors)
        if isinstance(self.flags, dict):
            coerced, errors, unknown = FlagSchema.objects.check_flags(self.flags)
            if errors:
                raise ValidationError({"flags": list(errors.values())})
            self.flags = coerced
            self._unknown_flags = unknown

    @property
    def unknown_flags(self):
        """Flags that no schema describes: allowed, and shown as such."""
        cached = getattr(self, "_unknown_flags", None)
        if cached is None:
            cached = self._unknown_flags = FlagSchema.objects.unknown(self.flags)
        return cached

    # --- derived -----------------------------------------------------------

    @property
    def cluster_name(self):
        return f"{OWNED_PREFIX}{self.name}"

    def job_name(self, attempt):
        return f"{OWNED_PREFIX}{self.name}-{attempt}"

    def spec(self):
        """The spec fields as a dict: what a clone copies and a change compares."""
        return {f: getattr(self, f) for f in SPEC_FIELDS}

    @property
    def idle_minutes(self):
        """Minutes a finished run's cluster stays up before it is stopped; None keeps it up."""
        if self.keep_cluster_up:
            return None
        return self.autostop_minutes if self.autostop_minutes is not None else settings.SKYDECK_IDLE_MINUTES

    @property
    def stall_threshold(self):
        """Minutes of silence after which the watchdog acts; None: off."""
        minutes = self.stall_minutes if self.stall_minutes is not None else settings.SKYDECK_STALL_MINUTES
        return minutes or None

    def spent(self):
        """What its jobs have cost, in $, over all attempts and restarts."""
        return self.jobs.aggregate(total=models.Sum("cost"))["total"] or 0.0

    @property
    def run_finished(self):
        """RUNNING was asked, and the run has ended as its restart policy allows: nothing more will start."""
        return (
            self.desired_state == DesiredState.RUNNING
            and self.phase in (Phase.SUCCEEDED, Phase.FAILED)
            and self.reconciled_run == self.run_number  # a fresh run is on its way until the reconciler looked
        )

    @property
    def shows_desired(self):
        """Whether the desired state says more than the phase: on the way there, or not yet there."""
        settled = {
            (DesiredState.RUNNING, Phase.RUNNING),
            (DesiredState.STOPPED, Phase.STOPPED),
            (DesiredState.TERMINATED, Phase.TERMINATED),
        }
        return (self.desired_state, self.phase) not in settled and not self.run_finished

    @property
    def out_of_date(self):
        """The active job runs an older spec than the current one."""
        active = self.active_job
        return active is not None and active.generation < self.generation

    @property
    def active_job(self):
        cached = getattr(self, "_prefetched_objects_cache", {}).get("jobs")
        if cached is not None:
            return next((j for j in cached if j.status in ACTIVE_JOB_STATUSES), None)
        return self.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()

    @property
    def last_job(self):
        cached = getattr(self, "_prefetched_objects_cache", {}).get("jobs")
        if cached is not None:
            return max(cached, key=lambda j: j.attempt, default=None)
        return self.jobs.order_by("-attempt").first()


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=ACTIVE_JOB_STATUSES)

    def in_flight_requests(self):
        return self.filter(status=JobStatus.LAUNCHING).exclude(launch_request_id="")


class Job(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="jobs")
    attempt = models.PositiveIntegerField()
    run_number = models.PositiveIntegerField(default=0)
    generation = models.PositiveIntegerField()
    backend = models.CharField(max_length=20, choices=Backend.choices)
    name = models.CharField(max_length=200, help_text="sd-<experiment>-<attempt>: the idempotency key")
    command = models.TextField(help_text="The command line it ran")
    flags = models.JSONField(default=dict, blank=True)
    resources = models.JSONField(default=dict, blank=True)
    cluster_name = models.CharField(max_length=200, blank=True)
    sky_job_id = models.IntegerField(null=True, blank=True)
    launch_request_id = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.LAUNCHING)
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    exit_codes = models.JSONField(null=True, blank=True, help_text="One exit code per node, where the backend says")
    failure_kind = models.CharField(max_length=10, choices=FailureKind.choices, default=FailureKind.NONE)
    failure_reason = models.CharField(max_length=60, blank=True, help_text="CamelCase reason for a failure")
    error_message = models.TextField(blank=True)
    # Set when a user asks for this job alone to be cancelled; the reconciler cancels it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    log_path = models.CharField(max_length=1000, blank=True)
    # The copy of the output holds all of it (the job ended and its last lines were fetched).
    log_complete = models.BooleanField(default=False)
    # When someone last read the log (the page or the API): watched copies are refreshed more often.
    log_watched_at = models.DateTimeField(null=True, blank=True)
    cost = models.FloatField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-attempt"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "attempt"], name="unique_attempt_per_experiment"),
            # The database, not only the code, forbids a double launch.
            models.UniqueConstraint(
                fields=["experiment"],
                condition=Q(status__in=ACTIVE_JOB_STATUSES),
                name="one_active_job_per_experiment",
            ),
        ]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["cluster_name", "sky_job_id"])]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("experiments:job_detail", args=[self.experiment.name, self.attempt])

    @property
    def is_active(self):
        return self.status in ACTIVE_JOB_STATUSES

    def mark_watched(self, now=None):
        """Say that someone reads the log now (at most one write every few seconds)."""
        now = now or timezone.now()
        if self.log_watched_at is None or now - self.log_watched_at > WATCH_WRITE_EVERY:
            Job.objects.filter(pk=self.pk).update(log_watched_at=now)
            self.log_watched_at = now

    @property
    def output_complete(self):
        """The copy of the output holds all of it: nothing more will come."""
        if self.log_complete:
            return True
        # An old job whose copy was never completed (its cluster went first): what there is, is all.
        return not self.is_active and self.ended_at is not None and timezone.now() - self.ended_at > LOG_COMPLETE_WITHIN

    @property
    def duration(self):
        if not self.started_at:
            return None
        return (self.ended_at or timezone.now()) - self.started_at


class Event(models.Model):
    """The timeline and audit log."""

    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        DESIRED_STATE = "desired_state", "Desired state"
        SPEC = "spec", "Spec edited"
        EDIT = "edit", "Edited"
        RESTART = "restart", "Restart"
        LAUNCH = "launch", "Launch"
        START = "start", "Start"
        EXEC = "exec", "Exec"
        CANCEL = "cancel", "Cancel"
        STOP = "stop", "Stop"
        DOWN = "down", "Down"
        JOB = "job", "Job status"
        FAILURE = "failure", "Failure"
        GIVE_UP = "give_up", "Gave up"
        GUARDRAIL = "guardrail", "Guardrail"
        ADOPT = "adopt", "Adopted"
        DELETE = "delete", "Deleted"
        INFO = "info", "Info"

    experiment = models.ForeignKey(Experiment, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.CharField(max_length=40, default="user", help_text="user, reconciler, poller, admin, api")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["experiment", "-created_at", "-id"], name="event_experiment_newest")]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.kind}: {self.message}"

    @classmethod
    def record(cls, experiment, kind, message, *, job=None, user=None, actor=None, data=None):
        if actor is None:
            actor = "user" if user is not None else "reconciler"
        event = cls.objects.create(
            experiment=experiment,
            job=job,
            user=user if (user is not None and user.is_authenticated) else None,
            actor=actor,
            kind=kind,
            message=message,
            data=data or {},
        )
        if event.data.get("notify"):
            # A topic someone may be subscribed to: told once the transaction commits (experiments.notify).
            from . import enqueue

            enqueue.notify(event.pk)
        return event

    @property
    def who(self):
        if self.user_id:
            return self.user.get_username()
        return self.actor


class FlagSchemaQuerySet(models.QuerySet):
    """Schema rows by path, under one rule: a row entered by hand wins over one imported from
    a model, which wins over one learnt from flags in use; then the namespace, alphabetically."""

    def ranked(self):
        return self.annotate(
            rank=Case(
                When(source=FlagSchema.Source.MANUAL, then=Value(0)),
                When(source=FlagSchema.Source.MODEL, then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            )
        )

    def describing(self, paths):
        """path -> the one row that describes it, for the paths that have one (one query)."""
        paths = [p for p in paths if isinstance(p, str) and p]
        found = {}
        if paths:
            for row in self.filter(path__in=paths).ranked().order_by("rank", "namespace"):
                found.setdefault(row.path, row)
        return found

    def unknown(self, flags):
        """The flags that no schema row describes."""
        if not isinstance(flags, dict) or not flags:
            return []
        known = self.describing(list(flags))
        return sorted(k for k in flags if k not in known)

    def check_flags(self, flags):
        """Check and coerce flags against the row describing each: ``(coerced, errors, unknown)``.

        A row entered by hand or imported from a model is authoritative: a value that does
        not fit its type or choices is an error naming the flag. A learnt row only says the
        flag is known. A flag with no row is kept as it is and listed as unknown.
        """
        if not isinstance(flags, dict):
            return {}, {"": "Flags must be an object of name: value."}, []
        coerced, errors, candidates = {}, {}, {}
        for key, value in flags.items():
            if not isinstance(key, str) or not FLAG_KEY_RE.fullmatch(key) or len(key) > FLAG_KEY_MAX:
                errors[str(key)] = (
                    f"Flag name {str(key)!r} is not valid: start with a letter or _, then letters, digits, _ . or -."
                )
            elif value is None or isinstance(value, (list, dict)) or not _storable(value):
                errors[key] = f"Flag {key!r} must be a string, finite number or boolean without NUL characters."
            else:
                candidates[key] = value
        rows = self.describing(list(candidates))
        for key, value in candidates.items():
            row = rows.get(key)
            if row is None or row.source == FlagSchema.Source.LEARNT:
                coerced[key] = value
                continue
            try:
                coerced[key] = coerce_flag(row.type, value, row.choices or ())
            except FlagValueError as exc:
                errors[key] = f"Flag {key!r} {exc} (got {json.dumps(value)})."
        if not errors:
            try:
                validate_flag_dict(coerced)
            except ValidationError as exc:
                errors[""] = "; ".join(exc.messages)
        return coerced, errors, sorted(k for k in candidates if k not in rows)

    def search(self, query="", limit=20, namespace=None):
        """Rows whose path (or description) matches ``query``, best first, one per path.

        Prefix matches of the path come first, then matches of a path segment, then
        matches anywhere; among rows of one path, the one that describes it.
        """
        query = (query or "").strip()
        qs = self.filter(namespace=namespace) if namespace else self.all()
        if query:
            qs = qs.filter(Q(path__icontains=query) | Q(description__icontains=query))
            match = Case(
                When(path__istartswith=query, then=Value(0)),
                When(path__icontains=f".{query}", then=Value(1)),
                When(path__icontains=query, then=Value(2)),
                default=Value(3),
                output_field=IntegerField(),
            )
        else:
            match = Value(0, output_field=IntegerField())
        qs = qs.ranked().annotate(match=match).order_by("match", "path", "rank", "namespace")
        limit = max(1, min(int(limit or 20), 200))
        seen, result = set(), []
        # Read a few more than asked so duplicates across namespaces still fill the page.
        for row in qs[: limit * 4]:
            if row.path not in seen:
                seen.add(row.path)
                result.append(row)
                if len(result) == limit:
                    break
        return result


def _storable(value):
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, str):
        return storable_text(value)
    return True


class FlagSchema(models.Model):
    Type = FlagType

    class Source(models.TextChoices):
        MODEL = "model", "Imported from a model"
        LEARNT = "learnt", "Learnt from experiments"
        MANUAL = "manual", "Entered by hand"

    namespace = models.CharField(max_length=200, default="default")
    path = models.CharField(max_length=300)
    type = models.CharField(max_length=10, choices=Type.choices, default=Type.STRING)
    type_name = models.CharField(max_length=200, blank=True, help_text="The original type, for display")
    default = models.JSONField(null=True, blank=True)
    choices = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True)
    required = models.BooleanField(default=False)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.MANUAL)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FlagSchemaQuerySet.as_manager()

    class Meta:
        ordering = ["namespace", "path"]
        constraints = [models.UniqueConstraint(fields=["namespace", "path"], name="unique_flag_path_per_namespace")]
        indexes = [models.Index(fields=["path"])]

    def __str__(self):
        return f"{self.namespace}:{self.path} ({self.type})"


class ApiToken(models.Model):
    """A per-user bearer token for the REST API, stored as a SHA-256 hash."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="The first characters, to recognise a token")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(key):
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name=""):
        """Create a token; the plain key is returned once and never stored."""
        key = "sdk_" + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, prefix=key[:12], key_hash=cls.hash(key))
        return token, key

    @classmethod
    def authenticate(cls, key):
        token = (
            cls.objects.select_related("user")
            .filter(key_hash=cls.hash(key), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        if token is None:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user

    def revoke(self):
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])


class FailureRule(models.Model):
    """Classifies a failed job from its exit code and the last lines of its output (admin-editable).

    The first enabled rule in ``position`` order that matches names the failure
    (``failure_reason``) and says whose it is (``failure_kind``): the restart policy
    retries an infrastructure failure without counting it against max_restarts.
    """

    position = models.PositiveIntegerField(default=100, help_text="Rules are tried in this order, lowest first")
    reason = models.CharField(
        max_length=60,
        validators=[RegexValidator(r"^[A-Z][A-Za-z0-9]*\Z", "A CamelCase name, e.g. OutOfMemory")],
        help_text="The failure's name, CamelCase (e.g. OutOfMemory)",
    )
    kind = models.CharField(
        max_length=10,
        choices=[
            (FailureKind.USER, "The user's code (the restart policy decides)"),
            (FailureKind.INFRA, "The infrastructure (retried)"),
        ],
        default=FailureKind.USER,
    )
    exit_codes = models.JSONField(
        default=list, blank=True, help_text="Matches a job that exited with one of these codes, e.g. [137]"
    )
    pattern = models.TextField(
        blank=True,
        help_text="Or whose last lines of output match this regular expression (Python syntax, case-insensitive)",
    )
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self):
        return f"{self.reason} ({self.get_kind_display()})"

    def clean(self):
        super().clean()
        errors = {}
        if not isinstance(self.exit_codes, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in self.exit_codes
        ):
            errors["exit_codes"] = "A list of whole numbers, e.g. [137] (or [] for none)."
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                errors["pattern"] = f"Not a regular expression: {exc}."
        if not self.pattern and not self.exit_codes and "exit_codes" not in errors:
            errors["pattern"] = "Give a pattern, exit codes, or both: a rule with neither matches nothing."
        if errors:
            raise ValidationError(errors)

    def matches(self, exit_code, output):
        """The line that matched (or a note on the exit code), else ''."""
        if exit_code is not None and exit_code in (self.exit_codes or []):
            return f"exit code {exit_code}"
        if self.pattern:
            try:
                found = re.search(self.pattern, output or "", re.IGNORECASE | re.MULTILINE)
            except re.error:
                return ""
            if found:
                start = output.rfind("\n", 0, found.start()) + 1
                end = output.find("\n", found.end())
                return output[start : end if end != -1 else len(output)].strip()[:300]
        return ""


class Revision(models.Model):
    """On SQLite, the one row whose value triggers bump on every change a page shows (see experiments.revision)."""

    value = models.BigIntegerField(default=0)

    def __str__(self):
        return str(self.value)


from .metric_models import *  # noqa
from .notification_models import DEFAULT_TOPICS, Notification, Subscription, Topic  # noqa: E402, F401
