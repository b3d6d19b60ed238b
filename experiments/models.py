"""The user's intent (Experiment, Sweep, FlagSchema) and its history (Job, Event)."""

import hashlib
import json
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import connection, models, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.urls import reverse
from django.utils import timezone

from clusters.models import OWNED_PREFIX, Backend

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?$")
name_validator = RegexValidator(
    NAME_RE,
    "Use lowercase letters, digits and hyphens, starting and ending with a letter or digit (at most 60).",
)
def unique_name(name, taken, limit=60):
    """``name``, or ``name-2``, ``name-3``… (cut to fit ``limit``), whichever is not in ``taken``."""
    candidate, n = name, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate = name[: limit - len(suffix)].rstrip("-") + suffix
        n += 1
    return candidate


# Names that are pages of SkyDeck (/experiments/new/, /sweeps/new/, ...), so no detail page could be reached.
RESERVED_NAMES = frozenset({"new", "bulk", "flags", "preview"})


def validate_not_reserved(value):
    if value in RESERVED_NAMES:
        raise ValidationError(f"{value!r} is the name of a SkyDeck page: choose another name.", code="reserved")


TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,49}$")


class DesiredState(models.TextChoices):
    RUNNING = "RUNNING", "Running"
    STOPPED = "STOPPED", "Stopped"
    TERMINATED = "TERMINATED", "Terminated"


class RestartPolicy(models.TextChoices):
    NEVER = "never", "Never"
    ON_FAILURE = "on_failure", "On failure"
    ALWAYS = "always", "Always"


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
    "managed",
    "backend",
)


def default_backend():
    return settings.SKYDECK_DEFAULT_BACKEND


def validate_tags(value):
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValidationError("Tags must be a list of strings.")
    for tag in value:
        if not TAG_RE.match(tag):
            raise ValidationError(f"Tag {tag!r} is not valid: use letters, digits and _ . : / - (at most 50).")


def validate_envs(value):
    if not isinstance(value, dict):
        raise ValidationError("Environment variables must be an object of NAME: value.")
    for key, val in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
            raise ValidationError(f"{key!r} is not a valid environment variable name.")
        if not isinstance(val, (str, int, float, bool)):
            raise ValidationError(f"Environment variable {key} must be a string or number.")


def validate_flags(value):
    # Local import: launch.py imports this module.
    from experiments.launch import validate_flag_dict

    validate_flag_dict(value)


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
        settled = Q(desired_state=DesiredState.RUNNING, phase__in=[Phase.SUCCEEDED, Phase.FAILED]) | Q(
            desired_state=DesiredState.STOPPED, phase=Phase.STOPPED
        ) | Q(desired_state=DesiredState.TERMINATED, phase=Phase.TERMINATED)
        backing_off = Q(desired_state=DesiredState.RUNNING, next_attempt_at__gt=now)
        return self.exclude(settled & Q(reconciled_run=models.F("run_number"))).exclude(backing_off)

    def delete_idle(self, *, user=None, actor="user"):
        """Delete those with no job in flight, auditing each; returns (deleted names, kept names).

        An experiment with an active job is kept: deleting it would orphan a
        running process or cluster.
        """
        with transaction.atomic():
            busy = set(self.filter(jobs__status__in=ACTIVE_JOB_STATUSES).values_list("name", flat=True))
            doomed = list(self.exclude(name__in=busy).values_list("pk", "name"))
            self.model.objects.filter(pk__in=[pk for pk, _ in doomed]).delete()
            for _, name in doomed:
                Event.record(None, Event.Kind.DELETE, f"Deleted experiment {name}", user=user, actor=actor,
                             data={"name": name})
        return [name for _, name in doomed], sorted(busy)

    def tagged(self, tag):
        if connection.features.supports_json_field_contains:
            return self.filter(tags__contains=[tag])
        # SQLite: no JSON containment operator, so ask json_each.
        table = self.model._meta.db_table
        return self.filter(
            pk__in=RawSQL(f'SELECT "{table}"."id" FROM "{table}", json_each("{table}"."tags") WHERE json_each.value = %s', (tag,))
        )


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
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("experiments:sweep_detail", args=[self.name])

    def clean(self):
        super().clean()
        from experiments.sweeps import validate_sweep

        validate_sweep(self.kind, self.parameters, self.samples)


class Experiment(models.Model):
    # --- spec -------------------------------------------------------------
    name = models.SlugField(max_length=60, unique=True, validators=[name_validator, validate_not_reserved])
    description = models.TextField(blank=True)
    command = models.TextField(help_text="The base command; flags are appended as key=value arguments")
    flags = models.JSONField(default=dict, blank=True, validators=[validate_flags])
    flag_style = models.CharField(max_length=10, choices=FlagStyle.choices, default=FlagStyle.PLAIN)
    accelerators = models.CharField(max_length=100, blank=True, help_text="e.g. H100:8 or A100:1")
    num_nodes = models.PositiveIntegerField(default=1)
    cpus = models.CharField(max_length=20, blank=True, help_text="e.g. 4 or 4+")
    memory = models.CharField(max_length=20, blank=True, help_text="GiB, e.g. 16 or 16+")
    infra = models.CharField(max_length=200, blank=True, help_text="cloud/region/zone, e.g. aws/us-east-1, or slurm, k8s")
    use_spot = models.BooleanField(default=False)
    disk_size = models.PositiveIntegerField(null=True, blank=True, help_text="GiB")
    image_id = models.CharField(max_length=300, blank=True)
    setup = models.TextField(blank=True)
    envs = models.JSONField(default=dict, blank=True, validators=[validate_envs])
    workdir = models.CharField(max_length=500, blank=True)
    autostop_minutes = models.PositiveIntegerField(null=True, blank=True, help_text="Idle minutes before autostop")
    managed = models.BooleanField(
        default=False, help_text="Run as a SkyPilot managed job (SkyPilot recovers spot preemptions)"
    )
    backend = models.CharField(max_length=20, choices=Backend.choices, default=default_backend)
    restart_policy = models.CharField(max_length=20, choices=RestartPolicy.choices, default=RestartPolicy.NEVER)
    max_restarts = models.PositiveIntegerField(default=3)
    tags = models.JSONField(default=list, blank=True, validators=[validate_tags])
    sweep = models.ForeignKey(Sweep, null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments")
    starred = models.BooleanField(default=False)
    desired_state = models.CharField(max_length=20, choices=DesiredState.choices, default=DesiredState.STOPPED)

    # --- bookkeeping ----------------------------------------------------------
    generation = models.PositiveIntegerField(default=1, help_text="Bumped by every spec change")
    # Bumped each time the user asks for a fresh run (set RUNNING, or restart).
    run_number = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
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
    claimed_by = models.CharField(max_length=40, blank=True)
    claim_expires_at = models.DateTimeField(null=True, blank=True)

    objects = ExperimentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["desired_state", "phase"]),
            models.Index(fields=["backend"]),
            models.Index(fields=["starred"]),
        ]

    def __str__(self):
        return self.name

    # The spec as it was loaded, so save() can tell whether it changed.
    @classmethod
    def from_db(cls, db, field_names, values, **kwargs):
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._loaded_spec = instance.spec_fingerprint() if set(SPEC_FIELDS) <= set(field_names) else None
        instance._loaded_run = (
            (instance.desired_state, instance.run_number) if {"desired_state", "run_number"} <= set(field_names) else None
        )
        return instance

    def spec_fingerprint(self):
        return json.dumps({f: getattr(self, f) for f in SPEC_FIELDS}, sort_keys=True, default=str)

    def spec_changed(self):
        loaded = getattr(self, "_loaded_spec", None)
        return self.pk is not None and loaded is not None and loaded != self.spec_fingerprint()

    def starts_a_new_run(self):
        """Desired state turned RUNNING (from the form, the admin, the API or plain ORM code)."""
        loaded = getattr(self, "_loaded_run", None)
        return (
            self.pk is not None
            and loaded is not None
            and loaded[0] != DesiredState.RUNNING
            and self.desired_state == DesiredState.RUNNING
            and loaded[1] == self.run_number  # not already bumped (request_restart does its own)
        )

    def save(self, *args, **kwargs):
        extra = set()
        if self.spec_changed():
            self.generation += 1
            extra |= {"generation", "updated_at"}
        if self.starts_a_new_run():
            # A fresh run: the restart budget and the backoff start over.
            self.run_number += 1
            self.failure_count = 0
            self.next_attempt_at = None
            extra |= {"run_number", "failure_count", "next_attempt_at", "updated_at"}
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and extra:
            kwargs["update_fields"] = set(update_fields) | extra
        super().save(*args, **kwargs)
        self._loaded_spec = self.spec_fingerprint()
        self._loaded_run = (self.desired_state, self.run_number)

    def get_absolute_url(self):
        return reverse("experiments:detail", args=[self.name])

    def clean(self):
        """Flags checked and coerced against their schemas: the form, the admin and the API all pass here."""
        super().clean()
        from experiments.flags import validate_against_schema

        if isinstance(self.flags, dict):
            coerced, errors, unknown = validate_against_schema(self.flags)
            if errors:
                raise ValidationError({"flags": list(errors.values())})
            self.flags = coerced
            self._unknown_flags = unknown

    @property
    def unknown_flags(self):
        """Flags that no schema describes: allowed, and shown as such."""
        cached = getattr(self, "_unknown_flags", None)
        if cached is None:
            from experiments.flags import unknown_paths

            cached = self._unknown_flags = unknown_paths(self.flags)
        return cached

    # --- derived -----------------------------------------------------------

    @property
    def cluster_name(self):
        return f"{OWNED_PREFIX}{self.name}"

    def job_name(self, attempt):
        return f"{OWNED_PREFIX}{self.name}-{attempt}"

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

    # --- intent changes, each audited and reconciled at once ------------------

    def set_desired_state(self, state, *, user=None, source="user"):
        """Record what the user wants; the reconciler makes it so."""
        if state not in DesiredState.values:
            raise ValidationError(f"{state!r} is not a desired state (use RUNNING, STOPPED or TERMINATED).")
        previous = self.desired_state
        if previous == state:
            return False
        if getattr(self, "_loaded_run", None) is None:
            self._loaded_run = (previous, self.run_number)  # built in memory: still knows what it was
        self.desired_state = state
        with transaction.atomic():
            self.save(update_fields=["desired_state", "updated_at"])  # save() starts the new run
            Event.record(
                self,
                Event.Kind.DESIRED_STATE,
                f"Desired state {previous} → {state}",
                user=user,
                actor=source,
                data={"from": previous, "to": state},
            )
            self.reconcile_soon()
        return True

    def request_restart(self, *, user=None, source="user"):
        """Cancel the active job (if any) and run the current spec afresh."""
        with transaction.atomic():
            self.run_number += 1
            self.failure_count = 0
            self.next_attempt_at = None
            previous = self.desired_state
            self.desired_state = DesiredState.RUNNING
            self.save(update_fields=["run_number", "failure_count", "next_attempt_at", "desired_state", "updated_at"])
            Event.record(self, Event.Kind.RESTART, f"Restart requested (was {previous})", user=user, actor=source)
            self.reconcile_soon()

    def reconcile_soon(self):
        """Enqueue a reconcile of this experiment once the transaction commits."""
        pk = self.pk

        def enqueue():
            from experiments.tasks import reconcile_experiment

            try:
                reconcile_experiment.delay(pk)
            except Exception:  # broker down: beat's periodic pass heals it
                import logging

                logging.getLogger(__name__).warning("could not enqueue reconcile of experiment %s", pk, exc_info=True)

        transaction.on_commit(enqueue)


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
    failure_kind = models.CharField(max_length=10, choices=FailureKind.choices, default=FailureKind.NONE)
    failure_reason = models.CharField(max_length=60, blank=True, help_text="CamelCase reason for a failure")
    error_message = models.TextField(blank=True)
    log_path = models.CharField(max_length=1000, blank=True)
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

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.kind}: {self.message}"

    @classmethod
    def record(cls, experiment, kind, message, *, job=None, user=None, actor=None, data=None):
        if actor is None:
            actor = "user" if user is not None else "reconciler"
        return cls.objects.create(
            experiment=experiment,
            job=job,
            user=user if (user is not None and user.is_authenticated) else None,
            actor=actor,
            kind=kind,
            message=message,
            data=data or {},
        )

    @property
    def who(self):
        if self.user_id:
            return self.user.get_username()
        return self.actor


class FlagSchema(models.Model):
    class Type(models.TextChoices):
        STRING = "string", "String"
        INTEGER = "integer", "Integer"
        FLOAT = "float", "Float"
        BOOLEAN = "boolean", "Boolean"
        CHOICE = "choice", "Choice"

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
