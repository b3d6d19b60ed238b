"""The control loop's decision and its application.

``plan()`` is a pure function of what the user wants and what was last
observed; it returns the next single step. ``reconcile()`` claims the
experiment row (compare-and-swap, so concurrent reconcilers never act twice),
writes its intent first (a Job in LAUNCHING) and only then calls the backend.
"""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from clusters.backends import get_backend
from clusters.backends.base import BackendError, BackendUnreachable
from clusters.models import BackendHealth, Cluster, ClusterStatus

from .launch import launch_spec
from .models import (
    ACTIVE_JOB_STATUSES,
    FAILED_JOB_STATUSES,
    DesiredState,
    Event,
    Experiment,
    FailureKind,
    Job,
    JobStatus,
    Phase,
    RestartPolicy,
)

logger = logging.getLogger(__name__)

# Failures that retrying cannot fix: give up at once with the reason shown.
NON_RETRYABLE_REASONS = frozenset({"InvalidSpec", "NoCloudAccess", "NotSupported", "BadCommand", "Unauthorized"})
MAX_STEPS_PER_PASS = 4


class Action(StrEnum):
    NOTHING = "nothing"  # in sync
    WAIT = "wait"  # something is in flight, or backing off
    LAUNCH = "launch"
    START = "start"
    EXEC = "exec"
    RESUBMIT = "resubmit"  # a LAUNCHING job whose submission never came back
    CANCEL = "cancel"
    STOP = "stop"
    DOWN = "down"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class JobView:
    attempt: int
    status: str
    run_number: int = 0
    generation: int = 1
    failure_kind: str = FailureKind.NONE
    failure_reason: str = ""
    exit_code: int | None = None
    has_request: bool = False
    has_job_id: bool = False
    age_seconds: float = 0.0
    error_message: str = ""
    ended_at: datetime | None = None

    @classmethod
    def of(cls, job, now):
        return cls(
            attempt=job.attempt,
            status=job.status,
            run_number=job.run_number,
            generation=job.generation,
            failure_kind=job.failure_kind,
            failure_reason=job.failure_reason,
            exit_code=job.exit_code,
            has_request=bool(job.launch_request_id),
            has_job_id=job.sky_job_id is not None,
            age_seconds=(now - job.created_at).total_seconds() if job.created_at else 0.0,
            error_message=job.error_message,
            ended_at=job.ended_at,
        )


@dataclass(frozen=True)
class Observed:
    desired_state: str
    run_number: int = 1
    restart_policy: str = RestartPolicy.NEVER
    max_restarts: int = 0
    active_job: JobView | None = None
    run_jobs: tuple = ()  # finished jobs of the current run, oldest first
    cluster_status: str | None = None  # None: no cluster
    cluster_request_kind: str = ""  # a start/stop/down in flight
    managed: bool = False
    backend_reachable: bool = True
    stop_unsupported: bool = False
    sweep_slot_free: bool = True
    next_attempt_at: datetime | None = None
    now: datetime = field(default_factory=timezone.now)
    max_infra_retries: int = 5
    resubmit_after: float = 60.0


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str
    message: str = ""
    phase: str | None = None  # None: leave the phase as it is


def _start_step(obs):
    """How to get a job running: exec on an UP cluster, start a stopped one, else launch."""
    if not obs.sweep_slot_free:
        return Plan(Action.WAIT, "WaitingForSweepSlot", "The sweep is at its max_concurrent limit.", Phase.PENDING)
    if obs.next_attempt_at and obs.now < obs.next_attempt_at:
        wait = int((obs.next_attempt_at - obs.now).total_seconds())
        return Plan(Action.WAIT, "BackingOff", f"Next attempt in {wait}s.", Phase.BACKOFF)
    if obs.managed or obs.cluster_status is None or obs.cluster_status == ClusterStatus.INIT:
        return Plan(Action.LAUNCH, "Launching", "Launching a new job.", Phase.LAUNCHING)
    if obs.cluster_status == ClusterStatus.UP:
        return Plan(Action.EXEC, "Launching", "Submitting a job to the running cluster.", Phase.LAUNCHING)
    return Plan(Action.START, "StartingCluster", "Starting the stopped cluster.", Phase.LAUNCHING)


def _after_finish(obs):
    """RUNNING wanted, nothing active: decide from the current run's finished jobs."""
    jobs = obs.run_jobs
    if not jobs:
        return _start_step(obs)
    last = jobs[-1]
    user_attempts = sum(1 for j in jobs if j.failure_kind != FailureKind.INFRA)
    restarts_used = max(0, user_attempts - 1)
    restarts_left = restarts_used < obs.max_restarts

    if last.status == JobStatus.SUCCEEDED:
        if obs.restart_policy == RestartPolicy.ALWAYS and restarts_left:
            return _start_step(obs)
        return Plan(Action.NOTHING, "Succeeded", f"Attempt {last.attempt} succeeded.", Phase.SUCCEEDED)
    if last.status == JobStatus.CANCELLED:
        return Plan(Action.NOTHING, "Cancelled", f"Attempt {last.attempt} was cancelled.", Phase.STOPPED)

    # A failure.
    detail = last.error_message or (f"exit code {last.exit_code}" if last.exit_code is not None else last.status)
    if last.failure_reason in NON_RETRYABLE_REASONS:
        return Plan(Action.GIVE_UP, last.failure_reason, detail, Phase.FAILED)
    if last.failure_kind == FailureKind.INFRA:
        infra_failures = sum(1 for j in jobs if j.failure_kind == FailureKind.INFRA)
        if infra_failures > obs.max_infra_retries:
            return Plan(
                Action.GIVE_UP,
                "TooManyInfraFailures",
                f"{infra_failures} infrastructure failures in a row; last: {detail}",
                Phase.FAILED,
            )
        return _start_step(obs)
    if obs.restart_policy in (RestartPolicy.ON_FAILURE, RestartPolicy.ALWAYS):
        if restarts_left:
            return _start_step(obs)
        return Plan(
            Action.GIVE_UP,
            "RestartLimitReached",
            f"Failed {user_attempts} times (max_restarts={obs.max_restarts}); last: {detail}",
            Phase.FAILED,
        )
    return Plan(Action.GIVE_UP, "Failed", f"Attempt {last.attempt} failed: {detail}", Phase.FAILED)


def plan(obs: Observed) -> Plan:
    """The next step towards the desired state. Pure: no I/O, no clock."""
    if not obs.backend_reachable:
        return Plan(Action.WAIT, "BackendUnreachable", "The backend is unreachable; nothing is changed until it answers.")

    active = obs.active_job
    if obs.desired_state == DesiredState.RUNNING:
        if active is not None:
            if active.run_number < obs.run_number:
                return Plan(Action.CANCEL, "Restarting", f"Cancelling attempt {active.attempt} to restart.", Phase.STOPPING)
            if active.status == JobStatus.LAUNCHING and not active.has_request and not active.has_job_id:
                if active.age_seconds >= obs.resubmit_after:
                    return Plan(Action.RESUBMIT, "Resubmitting", f"Attempt {active.attempt} was never confirmed; submitting again.", Phase.LAUNCHING)
                return Plan(Action.WAIT, "Launching", f"Attempt {active.attempt} is being submitted.", Phase.LAUNCHING)
            if active.status == JobStatus.RUNNING:
                return Plan(Action.WAIT, "Running", f"Attempt {active.attempt} is running.", Phase.RUNNING)
            return Plan(Action.WAIT, "Launching", f"Attempt {active.attempt} is {active.status}.", Phase.LAUNCHING)
        if obs.cluster_request_kind:
            return Plan(Action.WAIT, "ClusterBusy", f"Waiting for the cluster {obs.cluster_request_kind} to finish.")
        return _after_finish(obs)

    going = Phase.STOPPING if obs.desired_state == DesiredState.STOPPED else Phase.TERMINATING
    if active is not None:
        return Plan(Action.CANCEL, "Cancelling", f"Cancelling attempt {active.attempt}.", going)
    if obs.cluster_request_kind:
        return Plan(Action.WAIT, "ClusterBusy", f"Waiting for the cluster {obs.cluster_request_kind} to finish.", going)

    if obs.desired_state == DesiredState.STOPPED:
        if obs.cluster_status in (ClusterStatus.UP, ClusterStatus.INIT):
            if obs.stop_unsupported:
                return Plan(
                    Action.NOTHING,
                    "StopNotSupported",
                    "Jobs are cancelled, but this cluster cannot be stopped; set TERMINATED to release it.",
                    Phase.STOPPED,
                )
            return Plan(Action.STOP, "Stopping", "Stopping the cluster (its disk is kept).", Phase.STOPPING)
        return Plan(Action.NOTHING, "Stopped", "No job is running.", Phase.STOPPED)

    if obs.cluster_status is not None:
        return Plan(Action.DOWN, "Terminating", "Tearing the cluster down.", Phase.TERMINATING)
    return Plan(Action.NOTHING, "Terminated", "No job and no cluster.", Phase.TERMINATED)


# --- applying a plan -----------------------------------------------------------


def backoff_delay(failure_count):
    if failure_count <= 0:
        return 0.0
    return min(settings.SKYDECK_BACKOFF_MAX, settings.SKYDECK_BACKOFF_BASE * 2 ** (failure_count - 1))


def _update_backoff(experiment, finished):
    """failure_count and next_attempt_at follow from the run's trailing failures."""
    count = 0
    for job in reversed(finished):
        if job.status not in FAILED_JOB_STATUSES:
            break
        count += 1
    next_at = None
    if count and finished[-1].ended_at:
        next_at = finished[-1].ended_at + timedelta(seconds=backoff_delay(count))
    if (count, next_at) != (experiment.failure_count, experiment.next_attempt_at):
        experiment.failure_count, experiment.next_attempt_at = count, next_at
        Experiment.objects.filter(pk=experiment.pk).update(failure_count=count, next_attempt_at=next_at)


def _backend_reachable(backend_name):
    health = BackendHealth.objects.filter(backend=backend_name).first()
    return health is None or health.reachable


def _sweep_has_room(sweep, experiment):
    """Fewer of the sweep's other experiments have a job in flight than its max_concurrent."""
    if sweep is None or not sweep.max_concurrent:
        return True
    running = Job.objects.active().filter(experiment__sweep=sweep).exclude(experiment=experiment).count()
    return running < sweep.max_concurrent


def _sweep_slot_free(experiment, active):
    return active is not None or _sweep_has_room(experiment.sweep, experiment)


def _take_sweep_slot(experiment):
    """Recheck the sweep's limit under a lock, inside the transaction that writes the Job.

    Two reconcilers that both saw a free slot must not both launch: the sweep
    row lock (PostgreSQL) or the IMMEDIATE write transaction (SQLite) orders them.
    """
    if not experiment.sweep_id:
        return True
    from .models import Sweep

    return _sweep_has_room(Sweep.objects.select_for_update().filter(pk=experiment.sweep_id).first(), experiment)


def observe_experiment(experiment, now=None):
    """Gather what plan() needs for one experiment: a few small queries."""
    now = now or timezone.now()
    jobs = list(experiment.jobs.filter(Q(status__in=ACTIVE_JOB_STATUSES) | Q(run_number=experiment.run_number)).order_by("attempt"))
    active = next((j for j in jobs if j.status in ACTIVE_JOB_STATUSES), None)
    finished = tuple(JobView.of(j, now) for j in jobs if j.status not in ACTIVE_JOB_STATUSES and j.run_number == experiment.run_number)
    cluster = Cluster.objects.filter(backend=experiment.backend, name=experiment.cluster_name).first()
    _update_backoff(experiment, finished)
    return Observed(
        desired_state=experiment.desired_state,
        run_number=experiment.run_number,
        restart_policy=experiment.restart_policy,
        max_restarts=experiment.max_restarts,
        active_job=JobView.of(active, now) if active else None,
        run_jobs=finished,
        cluster_status=cluster.status if cluster else None,
        cluster_request_kind=experiment.cluster_request_kind if experiment.cluster_request_id else "",
        managed=experiment.managed,
        backend_reachable=_backend_reachable(experiment.backend),
        stop_unsupported=experiment.status_reason == "StopNotSupported",
        sweep_slot_free=_sweep_slot_free(experiment, active),
        next_attempt_at=experiment.next_attempt_at,
        now=now,
        max_infra_retries=settings.SKYDECK_MAX_INFRA_RETRIES,
        resubmit_after=settings.SKYDECK_RESUBMIT_AFTER,
    )


@dataclass
class Outcome:
    experiment: str
    actions: list = field(default_factory=list)
    reason: str = ""
    skipped: bool = False

    def __str__(self):
        if self.skipped:
            return f"{self.experiment}: skipped (claimed by another reconciler)"
        return f"{self.experiment}: {' → '.join(self.actions) or 'nothing'} ({self.reason})"


def claim(experiment_id, token, now=None):
    """Compare-and-swap: take the row only if nobody holds a live claim."""
    now = now or timezone.now()
    return (
        Experiment.objects.filter(pk=experiment_id)
        .filter(Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now))
        .update(claimed_by=token, claim_expires_at=now + timedelta(seconds=settings.SKYDECK_CLAIM_SECONDS))
        == 1
    )


def release(experiment_id, token):
    Experiment.objects.filter(pk=experiment_id, claimed_by=token).update(claimed_by="", claim_expires_at=None)


def reconcile(experiment_id):
    """One reconcile pass for one experiment. Returns an Outcome; never raises for expected failures."""
    token = uuid.uuid4().hex
    if not claim(experiment_id, token):
        name = Experiment.objects.filter(pk=experiment_id).values_list("name", flat=True).first() or str(experiment_id)
        return Outcome(experiment=name, skipped=True)
    try:
        return _reconcile_claimed(experiment_id)
    finally:
        release(experiment_id, token)


def _reconcile_claimed(experiment_id):
    experiment = Experiment.objects.select_related("sweep").get(pk=experiment_id)
    outcome = Outcome(experiment=experiment.name)
    for _ in range(MAX_STEPS_PER_PASS):
        experiment.refresh_from_db()
        decision = plan(observe_experiment(experiment))
        outcome.reason = decision.reason
        if decision.action in (Action.NOTHING, Action.WAIT):
            _set_status(experiment, decision)
            break
        outcome.actions.append(decision.action.value)
        if decision.action != Action.GIVE_UP:
            _set_status(experiment, decision)
        progressed = _apply(experiment, decision)
        if not progressed:
            break
    return outcome


def _set_status(experiment, decision, **extra):
    now = timezone.now()
    experiment.status_reason = decision.reason
    experiment.status_message = decision.message
    if decision.phase:
        experiment.phase = decision.phase
    experiment.last_reconciled_at = now
    fields = ["status_reason", "status_message", "phase", "last_reconciled_at"]
    if decision.action in (Action.NOTHING, Action.GIVE_UP):
        experiment.reconciled_run = experiment.run_number
        fields.append("reconciled_run")
    for key, value in extra.items():
        setattr(experiment, key, value)
        fields.append(key)
    # Status columns only: a concurrent spec edit keeps its own columns.
    Experiment.objects.filter(pk=experiment.pk).update(**{f: getattr(experiment, f) for f in fields})


def _apply(experiment, decision):
    """Carry out one action. True when the next step can be planned at once."""
    backend = get_backend(experiment.backend)
    handler = {
        Action.LAUNCH: _launch,
        Action.EXEC: _launch,
        Action.RESUBMIT: _resubmit,
        Action.START: _start,
        Action.CANCEL: _cancel,
        Action.STOP: _stop,
        Action.DOWN: _down,
        Action.GIVE_UP: _give_up,
    }[decision.action]
    try:
        return handler(experiment, decision, backend)
    except BackendUnreachable as exc:
        _set_status(experiment, Plan(Action.WAIT, exc.reason, f"Backend unreachable: {exc.message}"))
        return False
    except BackendError as exc:
        Event.record(experiment, Event.Kind.FAILURE, f"{decision.action.value} failed: {exc.message}", data={"reason": exc.reason})
        _set_status(experiment, Plan(Action.WAIT, exc.reason, exc.message, Phase.ERROR))
        return False


def _next_attempt(experiment):
    return (experiment.jobs.order_by("-attempt").values_list("attempt", flat=True).first() or 0) + 1


def _launch(experiment, decision, backend):
    attempt = _next_attempt(experiment)
    try:
        spec = launch_spec(experiment, attempt)
        backend.validate(spec)
    except BackendError as exc:
        return _spec_failure(experiment, attempt, exc.reason, exc.message)
    except Exception as exc:  # a ValidationError from the command builder
        message = "; ".join(getattr(exc, "messages", [str(exc)]))
        return _spec_failure(experiment, attempt, "InvalidSpec", message)

    # Intent first: the Job row exists before the backend hears of it.
    try:
        with transaction.atomic():
            if not _take_sweep_slot(experiment):
                _set_status(experiment, Plan(Action.WAIT, "WaitingForSweepSlot",
                                             "The sweep is at its max_concurrent limit.", Phase.PENDING))
                return False
            job = Job.objects.create(
                experiment=experiment,
                attempt=attempt,
                run_number=experiment.run_number,
                generation=experiment.generation,
                backend=experiment.backend,
                name=spec.job_name,
                command=spec.command,
                flags=experiment.flags,
                resources=spec.resources(),
                cluster_name="" if spec.managed else spec.cluster_name,
                status=JobStatus.LAUNCHING,
            )
    except IntegrityError:
        # Another pass got here first: the database forbids a second active job.
        logger.info("experiment %s already has an active job; not launching again", experiment.name)
        return False
    Experiment.objects.filter(pk=experiment.pk).update(observed_generation=experiment.generation)
    Event.record(experiment, Event.Kind.LAUNCH if decision.action == Action.LAUNCH else Event.Kind.EXEC,
                 f"Attempt {attempt}: {decision.action.value} `{spec.command}`", job=job)
    return _submit(experiment, job, spec, backend, exec_=decision.action == Action.EXEC)


def _resubmit(experiment, decision, backend):
    job = experiment.jobs.filter(status=JobStatus.LAUNCHING).first()
    if job is None:
        return True
    spec = launch_spec(experiment, job.attempt)
    Event.record(experiment, Event.Kind.LAUNCH, f"Attempt {job.attempt}: submitting again (no answer from the first try)", job=job)
    return _submit(experiment, job, spec, backend, exec_=False)


def _submit(experiment, job, spec, backend, *, exec_):
    try:
        submission = backend.exec(spec) if exec_ else backend.launch(spec)
    except BackendUnreachable as exc:
        # Unknown whether it was submitted: keep the intent; the next pass resubmits by name.
        _set_status(experiment, Plan(Action.WAIT, exc.reason, f"Backend unreachable: {exc.message}", Phase.LAUNCHING))
        return False
    except BackendError as exc:
        _fail_job(job, JobStatus.FAILED_LAUNCH, exc.reason, exc.message,
                  FailureKind.USER if not exc.retryable else FailureKind.INFRA)
        Event.record(experiment, Event.Kind.FAILURE, f"Attempt {job.attempt} failed to launch: {exc.message}", job=job,
                     data={"reason": exc.reason})
        return True
    now = timezone.now()
    job.launch_request_id = submission.request_id or ""
    job.sky_job_id = submission.job_id
    job.log_path = submission.log_path or job.log_path
    job.submitted_at = submission.submitted_at or now
    job.save(update_fields=["launch_request_id", "sky_job_id", "log_path", "submitted_at"])
    if submission.job_id is not None and submission.status in JobStatus.values:
        # Only while still LAUNCHING: a poll may already have seen the job run (or end).
        Job.objects.filter(pk=job.pk, status=JobStatus.LAUNCHING).update(status=submission.status)
    _record_cluster(experiment, ClusterStatus.UP if submission.job_id is not None else ClusterStatus.INIT)
    return False  # wait for the poller to see the job


def _spec_failure(experiment, attempt, reason, message):
    """A spec that can never launch: a FAILED_LAUNCH job records why; no retry."""
    try:
        with transaction.atomic():
            job = Job.objects.create(
                experiment=experiment, attempt=attempt, run_number=experiment.run_number,
                generation=experiment.generation, backend=experiment.backend,
                name=experiment.job_name(attempt), command=experiment.command, flags=experiment.flags,
                status=JobStatus.FAILED_LAUNCH, failure_kind=FailureKind.USER, failure_reason=reason,
                error_message=message, ended_at=timezone.now(),
            )
    except IntegrityError:
        return False
    Event.record(experiment, Event.Kind.FAILURE, f"Attempt {attempt} cannot launch: {message}", job=job, data={"reason": reason})
    return True


def _fail_job(job, status, reason, message, kind):
    job.status = status
    job.failure_reason = reason
    job.error_message = message
    job.failure_kind = kind
    job.ended_at = timezone.now()
    job.save(update_fields=["status", "failure_reason", "error_message", "failure_kind", "ended_at"])


def _record_cluster(experiment, status):
    """What the backend just confirmed; the poller keeps it accurate afterwards."""
    if experiment.managed:
        return
    Cluster.objects.update_or_create(
        backend=experiment.backend,
        name=experiment.cluster_name,
        defaults={"status": status, "last_seen_at": timezone.now()},
        create_defaults={"status": status, "launched_at": timezone.now()},
    )


def _start(experiment, decision, backend):
    submission = backend.start(experiment.cluster_name)
    Event.record(experiment, Event.Kind.START, f"Starting cluster {experiment.cluster_name}")
    if submission.request_id:
        Experiment.objects.filter(pk=experiment.pk).update(
            cluster_request_id=submission.request_id, cluster_request_kind="start"
        )
        _set_status(experiment, decision)
        return False
    _record_cluster(experiment, ClusterStatus.UP)
    return True


def _cancel(experiment, decision, backend):
    job = experiment.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    if job is None:
        return True
    # A managed job has no cluster of ours: an empty name tells the backend to cancel it in the jobs queue.
    cluster_name = job.cluster_name if experiment.managed else (job.cluster_name or experiment.cluster_name)
    backend.cancel(cluster_name, job.sky_job_id, request_id=job.launch_request_id)
    job.status = JobStatus.CANCELLED
    job.ended_at = timezone.now()
    job.save(update_fields=["status", "ended_at"])
    Event.record(experiment, Event.Kind.CANCEL, f"Attempt {job.attempt} cancelled ({decision.reason})", job=job)
    _set_status(experiment, decision)
    return True


def _stop(experiment, decision, backend):
    from clusters.backends.base import NotSupported

    try:
        result = backend.stop(experiment.cluster_name)
    except NotSupported as exc:
        Event.record(experiment, Event.Kind.STOP, f"Cannot stop {experiment.cluster_name}: {exc.message}. It stays up; set TERMINATED to release it.")
        _set_status(
            experiment,
            Plan(Action.NOTHING, "StopNotSupported", f"{exc.message} Jobs are cancelled; the cluster stays up until you set TERMINATED.", Phase.STOPPED),
        )
        return False
    Event.record(experiment, Event.Kind.STOP, f"Stopping cluster {experiment.cluster_name}")
    request_id = getattr(result, "request_id", "") if result is not None else ""
    if request_id:
        Experiment.objects.filter(pk=experiment.pk).update(cluster_request_id=request_id, cluster_request_kind="stop")
        _set_status(experiment, decision)
        return False
    _record_cluster(experiment, ClusterStatus.STOPPED)
    return True


def _down(experiment, decision, backend):
    result = backend.down(experiment.cluster_name)
    Event.record(experiment, Event.Kind.DOWN, f"Tearing down cluster {experiment.cluster_name}")
    request_id = getattr(result, "request_id", "") if result is not None else ""
    if request_id:
        Experiment.objects.filter(pk=experiment.pk).update(cluster_request_id=request_id, cluster_request_kind="down")
        _set_status(experiment, decision)
        return False
    Cluster.objects.filter(backend=experiment.backend, name=experiment.cluster_name).delete()
    return True


def _give_up(experiment, decision, backend):
    if experiment.status_reason != decision.reason or experiment.phase != decision.phase:
        Event.record(experiment, Event.Kind.GIVE_UP, f"Gave up: {decision.message}", data={"reason": decision.reason})
    _set_status(experiment, decision)
    return False


def reconcile_all():
    """One pass over every experiment that may need attention."""
    ids = list(Experiment.objects.needing_reconcile().order_by("id").values_list("id", flat=True))
    return [reconcile(pk) for pk in ids]
