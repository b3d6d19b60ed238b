"""The control loop's decision and its application.

``plan()`` is a pure function of what the user wants and what was last
observed; it returns the next single step. ``reconcile()`` claims the
experiment row (compare-and-swap, so concurrent reconcilers never act twice),
writes its intent first (a Job in LAUNCHING) and only then calls the backend.
"""

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from clusters.backends import get_backend
from clusters.backends.base import BackendError, BackendUnreachable, ClusterGone, NotSupported, infra_cannot_stop
from clusters.leases import holder_gone, holder_token, kept_alive
from clusters.models import BackendHealth, Cluster, ClusterStatus

from . import enqueue, intent, logs
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
    Sweep,
)

logger = logging.getLogger(__name__)

# Failures that retrying cannot fix: give up at once with the reason shown.
NON_RETRYABLE_REASONS = frozenset({"InvalidSpec", "NoCloudAccess", "NotSupported", "BadCommand", "Unauthorized"})
MAX_STEPS_PER_PASS = 4
# A submission that ended with one of these left the cluster recorded but perhaps unusable (an exec found it
# not set up, or the API server restarted mid-launch and forgot the request): the next step launches onto it.
CLUSTER_NOT_SET_UP = frozenset({"ClusterNotUp", "ClusterGone", "RequestLost"})


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
    HALT = "halt"  # a budget or the runtime limit was reached: the desired state becomes STOPPED/TERMINATED
    RESTART_STALLED = "restart_stalled"  # the watchdog: a job silent too long is ended as an infra failure


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
    cancel_requested: bool = False

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
            cancel_requested=job.cancel_requested_at is not None,
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
    resubmit_after: float = 10.0
    idle_minutes: int | None = None  # a finished run's cluster is stopped after this long; None keeps it up
    idle_grace: float = 0.0  # seconds more, when the backend's own autostop should act first
    can_stop: bool = True  # False where the infra can only tear a cluster down (Slurm, Kubernetes)
    given_up: bool = False  # the current run's give-up is already recorded (its phase is FAILED)
    # Guardrails.
    spent: float = 0.0  # $ its jobs have cost, all attempts and runs
    max_cost: float | None = None
    limit_action: str = DesiredState.STOPPED
    sweep_name: str = ""
    sweep_spent: float = 0.0
    sweep_max_cost: float | None = None
    sweep_limit_action: str = DesiredState.STOPPED
    run_started_at: datetime | None = None  # when the current run's first job was started
    max_runtime_minutes: int | None = None
    stall_minutes: int | None = None  # None: the watchdog is off
    stall_action: str = "restart"
    output_at: datetime | None = None  # when the active job last printed (or started)
    output_checked_at: datetime | None = None  # when that was last known to be current
    halt_reason: str = ""  # a guardrail set the desired state; shown while it holds
    halt_message: str = ""


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str
    message: str = ""
    phase: str | None = None  # None: leave the phase as it is
    idle_until: datetime | None = None  # when the idle cluster is to be stopped; the reconciler looks again then
    halt_to: str = ""  # HALT: the desired state a guardrail sets


def _start_step(obs):
    """How to get a job running: exec on an UP cluster, start a stopped one, else launch."""
    if not obs.sweep_slot_free:
        return Plan(Action.WAIT, "WaitingForSweepSlot", "The sweep is at its max_concurrent limit.", Phase.PENDING)
    if obs.next_attempt_at and obs.now < obs.next_attempt_at:
        wait = int((obs.next_attempt_at - obs.now).total_seconds())
        return Plan(Action.WAIT, "BackingOff", f"Next attempt in {wait}s.", Phase.BACKOFF)
    if _failed_to_launch_twice(obs):
        # Launching onto it again repeats what broke; a new cluster starts from nothing.
        return Plan(
            Action.DOWN,
            "Recreating",
            "The last two launches onto the cluster failed: tearing it down to launch on a new one.",
            Phase.LAUNCHING,
        )
    if obs.managed or obs.cluster_status is None or obs.cluster_status == ClusterStatus.INIT:
        return Plan(Action.LAUNCH, "Launching", "Launching a new job.", Phase.LAUNCHING)
    if obs.cluster_status == ClusterStatus.UP:
        last = obs.run_jobs[-1] if obs.run_jobs else None
        if last is not None and last.failure_reason in CLUSTER_NOT_SET_UP:
            return Plan(
                Action.LAUNCH,
                "Launching",
                f"The last submission ended with {last.failure_reason}; launching onto the cluster repairs it.",
                Phase.LAUNCHING,
            )
        return Plan(Action.EXEC, "Launching", "Submitting a job to the running cluster.", Phase.LAUNCHING)
    return Plan(Action.START, "StartingCluster", "Starting the stopped cluster.", Phase.LAUNCHING)


def _failed_to_launch_twice(obs):
    """The cluster is there (UP or INIT) and the run's last two attempts both failed to launch onto it."""
    if obs.managed or obs.cluster_status not in (ClusterStatus.UP, ClusterStatus.INIT) or len(obs.run_jobs) < 2:
        return False
    return all(j.status == JobStatus.FAILED_LAUNCH and j.failure_kind == FailureKind.INFRA for j in obs.run_jobs[-2:])


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
    detail = logs.last_line(last.error_message) or (
        f"exit code {last.exit_code}" if last.exit_code is not None else last.status
    )
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


def _idle_policy(obs, settled):
    """A run that has finished leaves its cluster up for a restart, then stops it (or tears it down)."""
    if obs.cluster_status != ClusterStatus.UP or obs.idle_minutes is None or obs.managed:
        return settled
    last = obs.run_jobs[-1] if obs.run_jobs else None
    if last is None or last.ended_at is None:
        return settled
    due = last.ended_at + timedelta(minutes=obs.idle_minutes, seconds=obs.idle_grace)
    verb = "stopped" if obs.can_stop else "torn down"
    if obs.now < due or (settled.action == Action.GIVE_UP and not obs.given_up):
        # (A give-up is recorded first; the cluster goes at a later pass.)
        # The pages show when (cluster_idle_until); the message stays the run's own.
        return replace(settled, idle_until=due)
    return Plan(
        Action.STOP if obs.can_stop else Action.DOWN,
        "IdleStop" if obs.can_stop else "IdleTeardown",
        f"Idle for {obs.idle_minutes} min since attempt {last.attempt} ended: the cluster is {verb}.",
    )


def plan(obs: Observed) -> Plan:
    """The next step towards the desired state. Pure: no I/O, no clock."""
    if not obs.backend_reachable:
        return Plan(
            Action.WAIT, "BackendUnreachable", "The backend is unreachable; nothing is changed until it answers."
        )

    if obs.desired_state == DesiredState.RUNNING:
        return _guarded(obs, _toward_running(obs))
    return _toward_stopped(obs)


def _toward_running(obs):
    active = obs.active_job
    if active is not None:
        if active.run_number < obs.run_number:
            return Plan(Action.CANCEL, "Restarting", f"Cancelling attempt {active.attempt} to restart.", Phase.STOPPING)
        if active.cancel_requested:
            return Plan(
                Action.CANCEL, "CancelRequested", f"Cancelling attempt {active.attempt}, as asked.", Phase.STOPPING
            )
        if active.status == JobStatus.LAUNCHING and not active.has_request and not active.has_job_id:
            if active.age_seconds >= obs.resubmit_after:
                return Plan(
                    Action.RESUBMIT,
                    "Resubmitting",
                    f"Attempt {active.attempt} was never confirmed; submitting again.",
                    Phase.LAUNCHING,
                )
            return Plan(Action.WAIT, "Launching", f"Attempt {active.attempt} is being submitted.", Phase.LAUNCHING)
        if active.status == JobStatus.RUNNING:
            return Plan(Action.WAIT, "Running", f"Attempt {active.attempt} is running.", Phase.RUNNING)
        return Plan(Action.WAIT, "Launching", f"Attempt {active.attempt} is {active.status}.", Phase.LAUNCHING)
    if obs.cluster_request_kind:
        return Plan(Action.WAIT, "ClusterBusy", f"Waiting for the cluster {obs.cluster_request_kind} to finish.")
    decision = _after_finish(obs)
    if decision.action in (Action.NOTHING, Action.GIVE_UP):
        return _idle_policy(obs, decision)
    return decision


def _toward_stopped(obs):
    active = obs.active_job
    going = Phase.STOPPING if obs.desired_state == DesiredState.STOPPED else Phase.TERMINATING
    if active is not None:
        return Plan(Action.CANCEL, "Cancelling", f"Cancelling attempt {active.attempt}.", going)
    if obs.cluster_request_kind:
        return Plan(Action.WAIT, "ClusterBusy", f"Waiting for the cluster {obs.cluster_request_kind} to finish.", going)

    if obs.desired_state == DesiredState.STOPPED:
        if obs.cluster_status in (ClusterStatus.UP, ClusterStatus.INIT):
            if obs.stop_unsupported or not obs.can_stop:
                kept = Plan(
                    Action.NOTHING,
                    "StopNotSupported",
                    "Jobs are cancelled, but this cluster cannot be stopped; set TERMINATED to release it.",
                    Phase.STOPPED,
                )
                return _idle_policy(replace(obs, can_stop=False), kept) if obs.run_jobs else kept
            return Plan(Action.STOP, "Stopping", "Stopping the cluster (its disk is kept).", Phase.STOPPING)
        return _halted(obs, Plan(Action.NOTHING, "Stopped", "No job is running.", Phase.STOPPED))

    if obs.cluster_status is not None:
        return Plan(Action.DOWN, "Terminating", "Tearing the cluster down.", Phase.TERMINATING)
    return _halted(obs, Plan(Action.NOTHING, "Terminated", "No job and no cluster.", Phase.TERMINATED))


def _halted(obs, settled):
    """Stopped by a guardrail: the status says which, until the user changes the desired state."""
    if not obs.halt_reason:
        return settled
    return replace(settled, reason=obs.halt_reason, message=obs.halt_message)


# --- guardrails: budgets, the runtime limit, the stall watchdog -------------------------

# Steps that start (so spend): a limit reached stops them before they are taken.
STARTING = frozenset({Action.LAUNCH, Action.EXEC, Action.START, Action.RESUBMIT})


def _minutes(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _limit_reached(obs):
    """A HALT plan when the experiment's or its sweep's budget, or its runtime limit, is reached."""
    if obs.max_cost is not None and obs.spent >= obs.max_cost:
        return Plan(
            Action.HALT,
            "BudgetExceeded",
            f"Budget ${obs.max_cost:,.2f} reached: its jobs have cost ${obs.spent:,.2f}.",
            halt_to=obs.limit_action,
        )
    if obs.sweep_max_cost is not None and obs.sweep_spent >= obs.sweep_max_cost:
        return Plan(
            Action.HALT,
            "BudgetExceeded",
            f"Sweep {obs.sweep_name}'s budget ${obs.sweep_max_cost:,.2f} reached: "
            f"its experiments' jobs have cost ${obs.sweep_spent:,.2f}.",
            halt_to=obs.sweep_limit_action,
        )
    if obs.max_runtime_minutes and obs.run_started_at is not None:
        ran = (obs.now - obs.run_started_at).total_seconds()
        if ran >= obs.max_runtime_minutes * 60:
            return Plan(
                Action.HALT,
                "RuntimeLimitReached",
                f"Runtime limit {_minutes(obs.max_runtime_minutes * 60)} reached: "
                f"this run started {_minutes(ran)} ago.",
                halt_to=obs.limit_action,
            )
    return None


def _stalled(obs):
    """The watchdog: a RUNNING job that printed nothing for stall_minutes (as far as is known)."""
    active = obs.active_job
    if not obs.stall_minutes or active is None or active.status != JobStatus.RUNNING:
        return None
    if obs.output_at is None or obs.output_checked_at is None:
        return None
    silent = (obs.output_checked_at - obs.output_at).total_seconds()
    if silent < obs.stall_minutes * 60:
        return None
    since = f"No output since {obs.output_at:%H:%M} UTC (watchdog: {obs.stall_minutes} min)"
    if obs.stall_action == "flag":
        return Plan(Action.WAIT, "Stalled", f"{since}; flagged only.", Phase.RUNNING)
    return Plan(
        Action.RESTART_STALLED,
        "Stalled",
        f"{since}: attempt {active.attempt} is ended as an infrastructure failure and started again.",
        Phase.LAUNCHING,
    )


def _guarded(obs, decision):
    """The step towards RUNNING, unless a guardrail says otherwise."""
    spending = (
        decision.action in STARTING
        or (obs.active_job is not None and decision.action != Action.CANCEL)
        or decision.reason in ("WaitingForSweepSlot", "BackingOff")  # about to start
    )
    if spending:
        halt = _limit_reached(obs)
        if halt is not None:
            return halt
    if decision.reason == "Running":
        return _stalled(obs) or decision
    return decision


# --- applying a plan -----------------------------------------------------------


def backoff_delay(failure_count):
    if failure_count <= 0:
        return 0.0
    return min(settings.SKYDECK_BACKOFF_MAX, settings.SKYDECK_BACKOFF_BASE * 2 ** (failure_count - 1))


def backoff_of(finished):
    """(failure_count, next_attempt_at) from the run's trailing failures."""
    count = 0
    for job in reversed(finished):
        if job.status not in FAILED_JOB_STATUSES:
            break
        count += 1
    next_at = None
    if count and finished[-1].ended_at:
        next_at = finished[-1].ended_at + timedelta(seconds=backoff_delay(count))
    return count, next_at


def _update_backoff(experiment, finished):
    """failure_count and next_attempt_at follow from the run's trailing failures."""
    count, next_at = backoff_of(finished)
    if (count, next_at) != (experiment.failure_count, experiment.next_attempt_at):
        experiment.failure_count, experiment.next_attempt_at = count, next_at
        Experiment.objects.filter(pk=experiment.pk).update(failure_count=count, next_attempt_at=next_at)


def _sweep_has_room(sweep, experiment):
    """Fewer of the sweep's other experiments have a job in flight than its max_concurrent."""
    if sweep is None or not sweep.max_concurrent:
        return True
    running = Job.objects.active().filter(experiment__sweep=sweep).exclude(experiment=experiment).count()
    return running < sweep.max_concurrent


def _take_sweep_slot(experiment):
    """Recheck the sweep's limit under a lock, inside the transaction that writes the Job.

    Two reconcilers that both saw a free slot must not both launch: the sweep
    row lock (PostgreSQL) or the IMMEDIATE write transaction (SQLite) orders them.
    """
    if not experiment.sweep_id:
        return True
    return _sweep_has_room(Sweep.objects.select_for_update().filter(pk=experiment.sweep_id).first(), experiment)


@dataclass
class Facts:
    """What plan() needs besides the experiment rows, read for many experiments at once."""

    jobs: dict  # experiment id -> its active and current-run jobs, by attempt
    last_ended: dict  # experiment id -> its last ended job (for a STOPPED experiment with no run of its own)
    clusters: dict  # (backend, name) -> Cluster
    reachable: dict  # backend -> bool
    sweep_active: dict  # sweep id -> jobs in flight among its experiments
    spent: dict = field(default_factory=dict)  # experiment id -> $ (those with a budget)
    sweep_spent: dict = field(default_factory=dict)  # sweep id -> $ (those with a budget)

    @classmethod
    def gather(cls, experiments):
        """A fixed number of queries, however many experiments."""
        ids = [e.pk for e in experiments]
        runs = {e.pk: e.run_number for e in experiments}
        jobs, last_ended = {}, {}
        wanted = Q(status__in=ACTIVE_JOB_STATUSES)
        for run in set(runs.values()):
            wanted |= Q(run_number=run, experiment_id__in=[pk for pk, r in runs.items() if r == run])
        for job in Job.objects.filter(experiment_id__in=ids).filter(wanted).order_by("attempt"):
            if job.status in ACTIVE_JOB_STATUSES or job.run_number == runs[job.experiment_id]:
                jobs.setdefault(job.experiment_id, []).append(job)
        stopped = [e.pk for e in experiments if e.desired_state == DesiredState.STOPPED and not jobs.get(e.pk)]
        if stopped:
            for job in (
                Job.objects.filter(experiment_id__in=stopped)
                .exclude(status__in=ACTIVE_JOB_STATUSES)
                .order_by("experiment_id", "-attempt")
            ):
                last_ended.setdefault(job.experiment_id, job)
        names = {e.cluster_name for e in experiments}
        clusters = {(c.backend, c.name): c for c in Cluster.objects.filter(name__in=names)}
        reachable = {h.backend: h.reachable for h in BackendHealth.objects.all()}
        sweeps = {e.sweep_id for e in experiments if e.sweep_id}
        sweep_active = dict(
            Job.objects.active()
            .filter(experiment__sweep_id__in=sweeps)
            .values_list("experiment__sweep_id")
            .annotate(n=Count("id"))
        ) if sweeps else {}  # fmt: skip
        # Budgets: what the jobs cost, only where a budget is set (one grouped query each).
        budgeted = [e.pk for e in experiments if e.max_cost is not None]
        spent = dict(
            Job.objects.filter(experiment_id__in=budgeted).values_list("experiment_id").annotate(total=Sum("cost"))
        ) if budgeted else {}  # fmt: skip
        budget_sweeps = {e.sweep_id for e in experiments if e.sweep_id and e.sweep.max_cost is not None}
        sweep_spent = dict(
            Job.objects.filter(experiment__sweep_id__in=budget_sweeps)
            .values_list("experiment__sweep_id")
            .annotate(total=Sum("cost"))
        ) if budget_sweeps else {}  # fmt: skip
        return cls(jobs, last_ended, clusters, reachable, sweep_active, spent, sweep_spent)


def observe_experiment(experiment, now=None, facts=None, write=True):
    """Gather what plan() needs for one experiment: a few small queries, or none with ``facts``.

    ``write`` keeps failure_count and next_attempt_at in step with the run's failures.
    """
    now = now or timezone.now()
    facts = facts or Facts.gather([experiment])
    jobs = facts.jobs.get(experiment.pk, [])
    active = next((j for j in jobs if j.status in ACTIVE_JOB_STATUSES), None)
    finished = tuple(
        JobView.of(j, now)
        for j in jobs
        if j.status not in ACTIVE_JOB_STATUSES and j.run_number == experiment.run_number
    )
    if not finished and experiment.desired_state == DesiredState.STOPPED:
        # Stopped with no run of its own: the idle policy counts from the last job it had.
        last = facts.last_ended.get(experiment.pk)
        finished = (JobView.of(last, now),) if last else ()
    cluster = facts.clusters.get((experiment.backend, experiment.cluster_name))
    if write:
        _update_backoff(experiment, finished)
    else:
        experiment.failure_count, experiment.next_attempt_at = backoff_of(finished)
    sweep = experiment.sweep if experiment.sweep_id else None
    sweep_free = True
    if active is None and sweep is not None and sweep.max_concurrent:
        sweep_free = facts.sweep_active.get(sweep.pk, 0) < sweep.max_concurrent
    run = [j for j in jobs if j.run_number == experiment.run_number and j.started_at is not None]
    stall = experiment.stall_threshold
    output = None
    if stall and active is not None and active.status == JobStatus.RUNNING:
        copied = hasattr(get_backend(active.backend), "sync_log")
        output = logs.last_output(active, now, copied=copied)
        # Silence counts from the job's start at the earliest.
        if active.started_at and (output.at is None or output.at < active.started_at):
            output = logs.Output(active.started_at, output.checked_at)
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
        backend_reachable=facts.reachable.get(experiment.backend, True),
        stop_unsupported=experiment.status_reason == "StopNotSupported",
        sweep_slot_free=sweep_free,
        next_attempt_at=experiment.next_attempt_at,
        now=now,
        max_infra_retries=settings.SKYDECK_MAX_INFRA_RETRIES,
        resubmit_after=settings.SKYDECK_RESUBMIT_AFTER,
        idle_minutes=experiment.idle_minutes,
        # SkyPilot's own autostop (set at launch) acts first; SkyDeck's timer is the backstop.
        idle_grace=(
            settings.SKYDECK_IDLE_GRACE_SECONDS
            if experiment.backend == "skypilot" and settings.SKYDECK_SKYPILOT_AUTOSTOP
            else 0.0
        ),
        can_stop=not (experiment.backend == "skypilot" and infra_cannot_stop(experiment.infra)),
        given_up=experiment.phase == Phase.FAILED and experiment.reconciled_run == experiment.run_number,
        spent=facts.spent.get(experiment.pk) or 0.0,
        max_cost=experiment.max_cost,
        limit_action=experiment.limit_action,
        sweep_name=sweep.name if sweep else "",
        sweep_spent=(facts.sweep_spent.get(sweep.pk) or 0.0) if sweep else 0.0,
        sweep_max_cost=sweep.max_cost if sweep else None,
        sweep_limit_action=sweep.limit_action if sweep else DesiredState.STOPPED,
        run_started_at=min((j.started_at for j in run), default=None),
        max_runtime_minutes=experiment.max_runtime_minutes,
        stall_minutes=stall,
        stall_action=experiment.stall_action,
        output_at=output.at if output else None,
        output_checked_at=output.checked_at if output else None,
        halt_reason=experiment.halt_reason,
        halt_message=experiment.halt_message,
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
    """Compare-and-swap: take the row only if nobody holds a live claim.

    A claim is short and renewed while its holder works: one held by a killed
    process runs out within seconds, or at once when the holder ran on this host.
    """
    now = now or timezone.now()
    until = now + timedelta(seconds=settings.SKYDECK_CLAIM_SECONDS)
    free = Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now)
    rows = Experiment.objects.filter(pk=experiment_id)
    if rows.filter(free).update(claimed_by=token, claim_expires_at=until) == 1:
        return True
    holder = rows.values_list("claimed_by", flat=True).first()
    return (
        bool(holder)
        and holder_gone(holder)
        and (rows.filter(claimed_by=holder).update(claimed_by=token, claim_expires_at=until) == 1)
    )


def renew(experiment_id, token):
    until = timezone.now() + timedelta(seconds=settings.SKYDECK_CLAIM_SECONDS)
    Experiment.objects.filter(pk=experiment_id, claimed_by=token).update(claim_expires_at=until)


def release(experiment_id, token):
    Experiment.objects.filter(pk=experiment_id, claimed_by=token).update(claimed_by="", claim_expires_at=None)


def reconcile(experiment_id, *, follow_up=True):
    """One reconcile pass for one experiment. Returns an Outcome; never raises for expected failures.

    When it acted, a poll follows in a few seconds, whichever pass it was (a user's
    change, the periodic pass, a freed sweep slot, a restart), so the new job is
    seen RUNNING and its end is seen soon.
    """
    token = holder_token()
    if not claim(experiment_id, token):
        name = Experiment.objects.filter(pk=experiment_id).values_list("name", flat=True).first() or str(experiment_id)
        return Outcome(experiment=name, skipped=True)
    try:
        with kept_alive(lambda: renew(experiment_id, token), every=settings.SKYDECK_CLAIM_SECONDS / 3):
            outcome = _reconcile_claimed(experiment_id)
    finally:
        release(experiment_id, token)
    if follow_up and outcome.actions:
        enqueue.poll_soon()
    return outcome


def _reconcile_claimed(experiment_id):
    experiment = Experiment.objects.select_related("sweep").get(pk=experiment_id)
    outcome = Outcome(experiment=experiment.name)
    for _ in range(MAX_STEPS_PER_PASS):
        experiment.refresh_from_db()
        decision = plan(observe_experiment(experiment))
        outcome.reason = decision.reason
        if decision.action in (Action.NOTHING, Action.WAIT):
            _announce(experiment, decision)
            _set_status(experiment, decision)
            break
        outcome.actions.append(decision.action.value)
        if decision.action != Action.GIVE_UP:
            _set_status(experiment, decision)
        progressed = _apply(experiment, decision)
        if not progressed:
            break
    if decision.action in (Action.NOTHING, Action.GIVE_UP):
        _sweep_settled(experiment)
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
    if decision.action != Action.WAIT or decision.idle_until:
        experiment.cluster_idle_until = decision.idle_until
        fields.append("cluster_idle_until")
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
        Action.HALT: _halt,
        Action.RESTART_STALLED: _restart_stalled,
    }[decision.action]
    try:
        return handler(experiment, decision, backend)
    except BackendUnreachable as exc:
        _set_status(experiment, Plan(Action.WAIT, exc.reason, f"Backend unreachable: {exc.message}"))
        return False
    except BackendError as exc:
        Event.record(
            experiment,
            Event.Kind.FAILURE,
            f"{decision.action.value} failed: {exc.message}",
            data={"reason": exc.reason},
        )
        _set_status(experiment, Plan(Action.WAIT, exc.reason, exc.message, Phase.ERROR))
        return False


def _next_attempt(experiment):
    return (experiment.jobs.order_by("-attempt").values_list("attempt", flat=True).first() or 0) + 1


def _launch(experiment, decision, backend):
    attempt = _next_attempt(experiment)
    if experiment.backend not in settings.SKYDECK_BACKENDS:
        return _spec_failure(
            experiment,
            attempt,
            "InvalidSpec",
            f"The {experiment.backend} backend is off on this SkyDeck (SKYDECK_BACKENDS).",
        )
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
                _set_status(
                    experiment,
                    Plan(
                        Action.WAIT, "WaitingForSweepSlot", "The sweep is at its max_concurrent limit.", Phase.PENDING
                    ),
                )
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
            # SkyDeck names the file the output goes to, from the job's own row.
            job.log_path = logs.path_for(job)
            job.save(update_fields=["log_path"])
    except IntegrityError:
        # Another pass got here first: the database forbids a second active job.
        logger.info("experiment %s already has an active job; not launching again", experiment.name)
        return False
    Experiment.objects.filter(pk=experiment.pk).update(observed_generation=experiment.generation)
    if experiment.sweep_id:  # the sweep runs again: its end is told again
        Sweep.objects.filter(pk=experiment.sweep_id).exclude(finished_at=None).update(finished_at=None)
    Event.record(
        experiment,
        Event.Kind.LAUNCH if decision.action == Action.LAUNCH else Event.Kind.EXEC,
        f"Attempt {attempt}: {decision.action.value} `{spec.command}`",
        job=job,
    )
    spec = replace(spec, log_path=job.log_path)
    return _submit(experiment, job, spec, backend, exec_=decision.action == Action.EXEC)


def _resubmit(experiment, decision, backend):
    """A job whose submission was never confirmed: find it at the backend first; submit again only if it has none."""
    job = experiment.jobs.filter(status=JobStatus.LAUNCHING).first()
    if job is None:
        return True
    if not job.log_path:
        job.log_path = logs.path_for(job)
        job.save(update_fields=["log_path"])
    spec = launch_spec(experiment, job.attempt, log_path=job.log_path)
    found = backend.find_submission(spec, since=job.created_at) if hasattr(backend, "find_submission") else None
    if found is not None:
        _record_submission(job, found)
        Event.record(
            experiment,
            Event.Kind.ADOPT,
            f"Attempt {job.attempt}: found at the backend "
            + (f"as job {found.job_id}" if found.job_id is not None else f"as request {found.request_id}")
            + "; not submitted again",
            job=job,
        )
        return False
    Event.record(
        experiment,
        Event.Kind.LAUNCH,
        f"Attempt {job.attempt}: submitting again (the backend has no job or request of that name)",
        job=job,
    )
    return _submit(experiment, job, spec, backend, exec_=False)


def _send(experiment, job, spec, backend, exec_):
    """exec onto the UP cluster, or launch; a cluster that turns out not to be up is launched onto instead."""
    if not exec_:
        return backend.launch(spec)
    try:
        return backend.exec(spec)
    except BackendUnreachable:
        raise
    except BackendError as exc:
        if not (isinstance(exc, ClusterGone) or exc.reason == "ClusterNotUp"):
            raise
        # E.g. the API server was restarted mid-launch: the cluster is recorded but never set up.
        # A launch onto it repairs it.
        Event.record(
            experiment, Event.Kind.LAUNCH, f"Attempt {job.attempt}: {exc.message} Launching onto the cluster.", job=job
        )
        _record_cluster(experiment, ClusterStatus.INIT)
        return backend.launch(spec)


def _submit(experiment, job, spec, backend, *, exec_):
    try:
        submission = _send(experiment, job, spec, backend, exec_)
    except BackendUnreachable as exc:
        # Unknown whether it was submitted: keep the intent; the next pass looks it up by name.
        _set_status(experiment, Plan(Action.WAIT, exc.reason, f"Backend unreachable: {exc.message}", Phase.LAUNCHING))
        return False
    except BackendError as exc:
        _fail_job(
            job,
            JobStatus.FAILED_LAUNCH,
            exc.reason,
            exc.message,
            FailureKind.USER if not exc.retryable else FailureKind.INFRA,
        )
        Event.record(
            experiment,
            Event.Kind.FAILURE,
            f"Attempt {job.attempt} failed to launch: {exc.message}",
            job=job,
            data={"reason": exc.reason},
        )
        return True
    _record_submission(job, submission)
    _record_cluster(experiment, ClusterStatus.UP if submission.job_id is not None else ClusterStatus.INIT)
    return False  # wait for the poller to see the job


def _record_submission(job, submission):
    now = timezone.now()
    job.launch_request_id = submission.request_id or ""
    job.sky_job_id = submission.job_id
    job.submitted_at = submission.submitted_at or now
    job.save(update_fields=["launch_request_id", "sky_job_id", "submitted_at"])
    if submission.job_id is not None and submission.status in JobStatus.values:
        # Only while still LAUNCHING: a poll may already have seen the job run (or end).
        Job.objects.filter(pk=job.pk, status=JobStatus.LAUNCHING).update(status=submission.status)


def _spec_failure(experiment, attempt, reason, message):
    """A spec that can never launch: a FAILED_LAUNCH job records why; no retry."""
    try:
        with transaction.atomic():
            job = Job.objects.create(
                experiment=experiment,
                attempt=attempt,
                run_number=experiment.run_number,
                generation=experiment.generation,
                backend=experiment.backend,
                name=experiment.job_name(attempt),
                command=experiment.command,
                flags=experiment.flags,
                status=JobStatus.FAILED_LAUNCH,
                failure_kind=FailureKind.USER,
                failure_reason=reason,
                error_message=message,
                ended_at=timezone.now(),
            )
    except IntegrityError:
        return False
    Event.record(
        experiment, Event.Kind.FAILURE, f"Attempt {attempt} cannot launch: {message}", job=job, data={"reason": reason}
    )
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
    why = {
        "Restarting": f" to start run {experiment.run_number}",
        "CancelRequested": ", as asked",
    }.get(decision.reason, f": desired state {experiment.desired_state}")
    Event.record(experiment, Event.Kind.CANCEL, f"Attempt {job.attempt} cancelled{why}", job=job)
    _set_status(experiment, decision)
    return True


def _stop(experiment, decision, backend):
    try:
        result = backend.stop(experiment.cluster_name)
    except NotSupported as exc:
        if decision.reason == "IdleStop":  # the idle policy tears down what cannot stop
            return _down(
                experiment,
                replace(decision, reason="IdleTeardown", message=f"{exc.message} {decision.message}"),
                backend,
            )
        Event.record(
            experiment,
            Event.Kind.STOP,
            f"Cannot stop {experiment.cluster_name}: {exc.message}. It stays up; set TERMINATED to release it.",
        )
        _set_status(
            experiment,
            Plan(
                Action.NOTHING,
                "StopNotSupported",
                f"{exc.message} Jobs are cancelled; the cluster stays up until you set TERMINATED.",
                Phase.STOPPED,
            ),
        )
        return False
    Event.record(experiment, Event.Kind.STOP, f"Stopping cluster {experiment.cluster_name}" + _why(decision))
    request_id = getattr(result, "request_id", "") if result is not None else ""
    if request_id:
        Experiment.objects.filter(pk=experiment.pk).update(cluster_request_id=request_id, cluster_request_kind="stop")
        _set_status(experiment, decision)
        return False
    _record_cluster(experiment, ClusterStatus.STOPPED)
    return True


def _down(experiment, decision, backend):
    result = backend.down(experiment.cluster_name)
    Event.record(experiment, Event.Kind.DOWN, f"Tearing down cluster {experiment.cluster_name}" + _why(decision))
    request_id = getattr(result, "request_id", "") if result is not None else ""
    if request_id:
        Experiment.objects.filter(pk=experiment.pk).update(cluster_request_id=request_id, cluster_request_kind="down")
        _set_status(experiment, decision)
        return False
    Cluster.objects.filter(backend=experiment.backend, name=experiment.cluster_name).delete()
    return True


def _why(decision):
    return f": {decision.message}" if decision.reason.startswith("Idle") or decision.reason == "Recreating" else ""


def _give_up(experiment, decision, backend):
    # Once per run: the passes after it (an idle teardown, a poll) come back here and say nothing new.
    recorded = experiment.phase == decision.phase and experiment.reconciled_run == experiment.run_number
    if not recorded:
        Event.record(
            experiment,
            Event.Kind.GIVE_UP,
            f"Gave up: {decision.message}",
            data={"reason": decision.reason, "notify": "gave_up"},
        )
    _set_status(experiment, decision)
    return False


def _halt(experiment, decision, backend):
    """A budget or the runtime limit: the desired state changes, through intent, with the figures."""
    intent.halt(intent.Actor.system(), experiment, decision.halt_to, decision.reason, decision.message)
    experiment.refresh_from_db()
    return True  # next: cancel, stop or tear down


def _restart_stalled(experiment, decision, backend):
    """The watchdog: end the silent job as an infrastructure failure; the restart policy starts it again."""
    job = experiment.jobs.filter(status=JobStatus.RUNNING).first()
    if job is None:
        return True
    cluster_name = job.cluster_name if experiment.managed else (job.cluster_name or experiment.cluster_name)
    backend.cancel(cluster_name, job.sky_job_id, request_id=job.launch_request_id)
    _fail_job(job, JobStatus.FAILED, "Stalled", decision.message, FailureKind.INFRA)
    Event.record(
        experiment,
        Event.Kind.GUARDRAIL,
        f"Attempt {job.attempt} stalled. {decision.message} It does not count against max_restarts.",
        job=job,
        data={"reason": "Stalled", "notify": "guardrail"},
    )
    return True


# Reasons a WAIT or NOTHING plan announces once, when the status first takes them.
ANNOUNCED = {"Stalled": ("guardrail", "The stall watchdog flagged attempt {attempt}: {message}")}


def _announce(experiment, decision):
    announced = ANNOUNCED.get(decision.reason)
    if announced is None or experiment.status_reason == decision.reason:
        return
    topic, template = announced
    active = experiment.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    Event.record(
        experiment,
        Event.Kind.GUARDRAIL,
        template.format(attempt=active.attempt if active else "?", message=decision.message),
        job=active,
        data={"reason": decision.reason, "notify": topic},
    )


def _sweep_settled(experiment):
    """When a sweep's last experiment settles, the sweep has finished: told once, until one starts again."""
    if not experiment.sweep_id:
        return
    sweep = Sweep.objects.filter(pk=experiment.sweep_id, finished_at__isnull=True).first()
    if sweep is None:
        return
    children = Experiment.objects.filter(sweep=sweep)
    if Job.objects.active().filter(experiment__sweep=sweep).exists():
        return
    unsettled = children.filter(desired_state=DesiredState.RUNNING).exclude(
        phase__in=[Phase.SUCCEEDED, Phase.FAILED]
    ) | children.exclude(desired_state=DesiredState.RUNNING).exclude(phase__in=[Phase.STOPPED, Phase.TERMINATED])
    if unsettled.exists():
        return
    if Sweep.objects.filter(pk=sweep.pk, finished_at__isnull=True).update(finished_at=timezone.now()) != 1:
        return  # another reconciler told it
    counts = dict(children.values_list("phase").annotate(n=Count("id")))
    summary = ", ".join(f"{n} {phase.lower()}" for phase, n in sorted(counts.items()))
    Event.record(
        experiment,
        Event.Kind.INFO,
        f"Sweep {sweep.name} finished: {summary}.",
        data={"notify": "sweep_finished", "sweep": sweep.pk},
    )


def _settled(experiment, decision, backoff):
    """The pass would write nothing new: no action, the same status, the same bookkeeping."""
    if decision.action not in (Action.NOTHING, Action.WAIT):
        return False
    if (experiment.failure_count, experiment.next_attempt_at) != backoff:
        return False
    same = (
        experiment.status_reason == decision.reason
        and experiment.status_message == decision.message
        and (decision.phase is None or experiment.phase == decision.phase)
    )
    if decision.action == Action.NOTHING:
        same = same and experiment.reconciled_run == experiment.run_number
        same = same and experiment.cluster_idle_until == decision.idle_until
    elif decision.idle_until:
        same = same and experiment.cluster_idle_until == decision.idle_until
    return same


def reconcile_all():
    """One pass over every experiment that may need attention.

    Everything plan() needs is read for all of them at once (a fixed number of
    queries); an experiment whose plan is to do nothing it has not already
    recorded is left alone — not claimed, not written. Only the others are
    reconciled one by one, each under its claim.
    """
    now = timezone.now()
    experiments = list(Experiment.objects.needing_reconcile().select_related("sweep").order_by("id"))
    facts = Facts.gather(experiments)
    quiet, busy = [], []
    for experiment in experiments:
        stored = (experiment.failure_count, experiment.next_attempt_at)
        decision = plan(observe_experiment(experiment, now, facts, write=False))
        backoff = (experiment.failure_count, experiment.next_attempt_at)
        experiment.failure_count, experiment.next_attempt_at = stored
        (quiet if _settled(experiment, decision, backoff) else busy).append(experiment)
    if quiet:
        Experiment.objects.filter(pk__in=[e.pk for e in quiet]).update(last_reconciled_at=now)
    outcomes = [Outcome(experiment=e.name, reason=e.status_reason) for e in quiet]
    return outcomes + [reconcile(e.pk) for e in busy]
