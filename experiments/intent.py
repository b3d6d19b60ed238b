"""The one door for every change of intent.

The dashboard's pages and buttons, its bulk actions, the admin, the REST API,
sweeps, the clusters page, files applied with ``manage.py apply`` and the
control loop's guardrails change what a user wants through these functions, and
nothing else does:

=====================  ====================================================
``create``             a new experiment (from a form, a clone, a sweep, …)
``edit``               spec and settings; a spec change bumps ``generation``
``clone``              a stopped copy under a free name
``delete``             experiments with no job in flight (the rest are kept)
``set_desired_state``  RUNNING / STOPPED / TERMINATED; RUNNING starts a run
``restart``            a fresh run of the current spec (cancels the active job)
``cancel_job``         ask for one job to be cancelled; no relaunch for it
``star`` / ``retag``   the list's own bookkeeping
``halt``               a guardrail (budget, runtime limit) sets STOPPED or
                       TERMINATED, with its reason and figures
``subscribe``          a user's own notifications (``unsubscribe`` ends one)
=====================  ====================================================

Each takes the ``Actor`` — who asks, through which surface — whose name goes
on the Event, and who must be allowed to change the experiment. Each validates
first, writes the change and its Event in one transaction, and enqueues a
reconcile of the experiment once that transaction commits. Bumps are explicit
here: ``Experiment.save()`` never changes ``generation`` or ``run_number``.
The backend is never called from here: the reconciler does that.
"""

import json
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import enqueue
from .models import (
    ACTIVE_JOB_STATUSES,
    SPEC_FIELDS,
    DesiredState,
    Event,
    Experiment,
    Job,
    LimitAction,
    Subscription,
    Sweep,
)
from .validators import NAME_MAX, unique_name

# Besides the spec, what a user edits, and what a clone and a sweep child copy.
# The guardrails: inputs to plan() that never change what runs, so no spec change.
GUARDRAIL_FIELDS = ("max_cost", "max_runtime_minutes", "limit_action", "stall_minutes", "stall_action")
SETTINGS_FIELDS = (
    "description", "restart_policy", "max_restarts", *GUARDRAIL_FIELDS, "tags", "sweep", "starred", "owner", "group",
)  # fmt: skip
EDITABLE_FIELDS = (*SPEC_FIELDS, *SETTINGS_FIELDS)
CLONED_FIELDS = (
    *SPEC_FIELDS, "description", "restart_policy", "max_restarts", *GUARDRAIL_FIELDS, "tags", "sweep", "group",
)  # fmt: skip
# A change to one of these can change what the reconciler does next.
BEHAVIOUR_FIELDS = frozenset((*SPEC_FIELDS, "restart_policy", "max_restarts", *GUARDRAIL_FIELDS, "sweep"))


@dataclass
class Actor:
    """Who asks for a change, and through which surface.

    ``source`` names the surface on the Event: ``user`` (the dashboard),
    ``admin``, ``api``, ``file`` (``manage.py apply``), ``cli``, or
    ``reconciler`` when SkyDeck itself acts (a budget, the watchdog).

    Everyone logged in may read everything. Only an experiment's owner, the
    members of its group, and staff may change it; SkyDeck itself (no user:
    the reconciler, the command line run by the operator) may change all.
    """

    user: object = None
    source: str = "user"
    _groups: frozenset | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, request, source="user"):
        user = getattr(request, "user", None)
        return cls(user if user is not None and user.is_authenticated else None, source)

    @classmethod
    def system(cls, source="reconciler"):
        return cls(None, source)

    @property
    def is_system(self):
        return self.user is None and self.source in SYSTEM_SOURCES

    @property
    def is_staff(self):
        return self.user is not None and (self.user.is_staff or self.user.is_superuser)

    def groups(self):
        if self._groups is None:
            self._groups = frozenset(self.user.groups.values_list("pk", flat=True)) if self.user else frozenset()
        return self._groups

    def may_change(self, thing):
        """An experiment (or sweep) this actor may change, run, stop and delete."""
        if self.is_system or self.is_staff:
            return True
        if self.user is None or thing.owner_id is None:
            return False
        return thing.owner_id == self.user.pk or (thing.group_id is not None and thing.group_id in self.groups())

    def may_use_backend(self, backend):
        """The local backend runs commands on SkyDeck's own host: where it is for staff only, only they use it."""
        if backend != "local" or settings.SKYDECK_LOCAL_BACKEND == "everyone":
            return True
        return self.is_system or self.is_staff

    def record(self, experiment, kind, message, **kwargs):
        return Event.record(experiment, kind, message, user=self.user, actor=self.source, **kwargs)


# Sources that act for SkyDeck itself, with no user: the control loop and the operator's command line.
SYSTEM_SOURCES = frozenset({"reconciler", "poller", "cli", "file"})


def _authorize(actor, experiments):
    refused = [e.name for e in experiments if not actor.may_change(e)]
    if refused:
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise PermissionDenied(
            f"You may not change {', '.join(refused[:10])}{more}: only the owner, its group and staff may."
        )


def _check_backend(actor, experiment):
    if not actor.may_use_backend(experiment.backend):
        raise ValidationError(
            {"backend": "The local backend runs commands on the SkyDeck host: on this install only staff may use it."}
        )


def _locked(experiment):
    """The row as it is now, locked until the transaction ends (SQLite's IMMEDIATE transaction serialises)."""
    return Experiment.objects.select_for_update().get(pk=experiment.pk)


def _copy_into(target, source):
    """Let the caller's object show what was saved."""
    if target is not source:
        for f in Experiment._meta.concrete_fields:
            setattr(target, f.attname, getattr(source, f.attname))


def _same(a, b):
    # JSON-aware: {"x": 1} and {"x": True} differ, as do 1 and 1.0 in a flag.
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _begin_run(experiment):
    """A fresh run: the restart budget and the backoff start over. Returns the fields changed."""
    experiment.run_number += 1
    experiment.failure_count = 0
    experiment.next_attempt_at = None
    return ["run_number", "failure_count", "next_attempt_at"]


def _check_state(state):
    if state not in DesiredState.values:
        raise ValidationError(
            {"desired_state": f"{state!r} is not a desired state (use RUNNING, STOPPED or TERMINATED)."}
        )


def _name_taken(name):
    return ValidationError({"name": ValidationError(f"An experiment named {name!r} already exists.", code="unique")})


def batched():
    """Within this block, reconciles are sent together when the transaction commits."""
    return enqueue.batched()


# --- create, clone ---------------------------------------------------------------------


def create(actor, experiment, *, desired_state=DesiredState.STOPPED, message="Created", data=None):
    """Save a new experiment built in memory, with its Event; RUNNING starts its first run."""
    if experiment.pk is not None:
        raise ValueError("create() takes an experiment that is not saved yet")
    _check_state(desired_state)
    experiment.desired_state = desired_state
    experiment.generation, experiment.run_number = 1, 0
    if experiment.created_by_id is None and actor.user is not None:
        experiment.created_by = actor.user
    if experiment.owner_id is None and actor.user is not None:
        experiment.owner = actor.user
    _check_backend(actor, experiment)
    if desired_state == DesiredState.RUNNING:
        _begin_run(experiment)
    if Experiment.objects.filter(name=experiment.name).exists():
        raise _name_taken(experiment.name)
    experiment.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            experiment.save()
            actor.record(
                experiment,
                Event.Kind.CREATED,
                message if desired_state == DesiredState.STOPPED else f"{message} (desired {desired_state})",
                data={"desired_state": desired_state, **(data or {})},
            )
            enqueue.reconcile_soon([experiment.pk])
    except IntegrityError:
        experiment.pk = None
        raise _name_taken(experiment.name) from None
    return experiment


def free_name(base):
    """``base``, or ``base-2``, ``base-3``… whichever no experiment has."""
    base = base[: NAME_MAX - 6].rstrip("-")
    return unique_name(base, Experiment.objects.names_like(base))


def copy_of(source, **overrides):
    """An unsaved experiment with the source's spec and settings (what a clone or a sweep child starts from).

    Its owner is whoever makes the copy (``create`` sets it); the group stays.
    """
    copy = Experiment(**{f: getattr(source, f) for f in CLONED_FIELDS})
    copy.flags = dict(source.flags or {})
    copy.envs = dict(source.envs or {})
    copy.tags = list(source.tags or [])
    for key, value in overrides.items():
        setattr(copy, key, value)
    return copy


def clone(actor, source, *, name=None):
    """A stopped copy of ``source`` under ``name`` or a free ``<name>-copy``."""
    copy = copy_of(source, name=name or free_name(f"{source.name}-copy"))
    return create(actor, copy, message=f"Cloned from {source.name}", data={"source": source.name})


# --- edit --------------------------------------------------------------------------------


@dataclass
class Edit:
    """What an edit did, for the caller to say."""

    experiment: Experiment
    changed: list = field(default_factory=list)  # every field whose value changed
    spec_changed: list = field(default_factory=list)  # those that bumped the generation
    desired_changed: bool = False
    restarted: bool = False
    running_old_spec: Job | None = None  # the active job keeps the previous spec until a restart


def edit(actor, experiment, changes, *, restart=False):
    """Change spec fields and settings (and the desired state, if given).

    A spec change bumps ``generation`` and writes one SPEC Event naming the
    fields; the active job keeps running the old spec ("out of date") unless
    ``restart`` is true. Values are validated and coerced (flags against their
    schemas) before anything is written; a ``ValidationError`` changes nothing.
    """
    changes = dict(changes)
    desired = changes.pop("desired_state", None)
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(dict.fromkeys(sorted(unknown), "This field cannot be changed."))
    if desired is not None:
        _check_state(desired)
    _authorize(actor, [experiment])
    if ({"owner", "group"} & set(changes)) and not (actor.is_staff or actor.is_system):
        group = changes.get("group")
        if "owner" in changes or (group is not None and group.pk not in actor.groups()):
            raise PermissionDenied("Only staff may give an experiment to someone else, or to a group you are not in.")
    with transaction.atomic():
        current = _locked(experiment)
        before = {f: getattr(current, f) for f in changes}
        for key, value in changes.items():
            setattr(current, key, value)
        if "backend" in changes:
            _check_backend(actor, current)
        current.full_clean(validate_unique=False)
        changed = [f for f in changes if not _same(getattr(current, f), before[f])]
        result = Edit(experiment=experiment, changed=changed, spec_changed=[f for f in changed if f in SPEC_FIELDS])
        if changed:
            fields = [*changed, "updated_at"]
            if result.spec_changed:
                current.generation += 1
                fields.append("generation")
            current.save(update_fields=fields)
            names = ", ".join(sorted(changed))
            if result.spec_changed:
                actor.record(
                    current,
                    Event.Kind.SPEC,
                    f"Spec edited ({names}); generation {current.generation}",
                    data={"fields": sorted(changed), "generation": current.generation},
                )
            else:
                actor.record(current, Event.Kind.EDIT, f"Edited ({names})", data={"fields": sorted(changed)})
        if desired is not None:
            result.desired_changed = _set_desired(actor, current, desired)
        active = current.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
        if result.spec_changed and active is not None:
            if restart:
                _restart(actor, current)
                result.restarted = True
            else:
                result.running_old_spec = active
        if BEHAVIOUR_FIELDS.intersection(changed):
            enqueue.reconcile_soon([current.pk])
    _copy_into(experiment, current)
    return result


def retag(actor, experiments, *, add=(), remove=()):
    """Add and remove tags on many experiments; returns how many changed."""
    changed = 0
    with transaction.atomic():
        for experiment in experiments:
            tags = [t for t in (experiment.tags or []) if t not in set(remove)]
            tags += [t for t in add if t not in tags]
            if tags != list(experiment.tags or []):
                changed += bool(edit(actor, experiment, {"tags": tags}).changed)
    return changed


def star(actor, experiments, starred=True):
    """Star or unstar: the list's own bookkeeping, with no Event and no reconcile."""
    experiments = list(experiments)
    _authorize(actor, experiments)
    return (
        Experiment.objects.filter(pk__in=[e.pk for e in experiments]).exclude(starred=starred).update(starred=starred)
    )


# --- desired state, restart, cancel --------------------------------------------------------


def over_budget(experiment):
    """Why a run cannot start: its budget, or its sweep's, is spent ('' when it can)."""
    if experiment.max_cost is not None:
        spent = experiment.spent()
        if spent >= experiment.max_cost:
            return (
                f"{experiment.name} is over its budget: ${spent:,.2f} spent of ${experiment.max_cost:,.2f}. "
                "Raise the budget (or clear it) to run it again."
            )
    sweep = experiment.sweep if experiment.sweep_id else None
    if sweep is not None and sweep.max_cost is not None:
        spent = sweep.spent()
        if spent >= sweep.max_cost:
            return (
                f"Sweep {sweep.name} is over its budget: ${spent:,.2f} spent of ${sweep.max_cost:,.2f}. "
                "Raise the sweep's budget (or clear it) to run its experiments again."
            )
    return ""


def _check_budget(experiment):
    problem = over_budget(experiment)
    if problem:
        raise ValidationError({"desired_state": problem})


def _set_desired(actor, current, state):
    previous = current.desired_state
    if previous == state:
        return False
    if state == DesiredState.RUNNING:
        _check_budget(current)
    current.desired_state = state
    fields = ["desired_state", "updated_at"]
    if state == DesiredState.RUNNING:
        fields += _begin_run(current)
    if current.halt_reason:  # the user decides now: the guardrail's word no longer stands
        current.halt_reason, current.halt_message = "", ""
        fields += ["halt_reason", "halt_message"]
    current.save(update_fields=fields)
    actor.record(
        current, Event.Kind.DESIRED_STATE, f"Desired state {previous} → {state}", data={"from": previous, "to": state}
    )
    enqueue.reconcile_soon([current.pk])
    return True


def set_desired_state(actor, experiment, state):
    """Record what the user wants; the reconciler makes it so. False when it already was."""
    _check_state(state)
    _authorize(actor, [experiment])
    with transaction.atomic():
        current = _locked(experiment)
        changed = _set_desired(actor, current, state)
    _copy_into(experiment, current)
    return changed


def set_desired_state_many(actor, experiments, state):
    """The same for many experiments, in one transaction and few tasks; returns how many changed."""
    _check_state(state)
    experiments = list(experiments)
    _authorize(actor, experiments)
    changed = 0
    with transaction.atomic(), enqueue.batched():
        for experiment in experiments:
            current = _locked(experiment)
            changed += _set_desired(actor, current, state)
            _copy_into(experiment, current)
    return changed


def _restart(actor, current):
    previous = current.desired_state
    _check_budget(current)
    current.desired_state = DesiredState.RUNNING
    current.halt_reason, current.halt_message = "", ""
    current.save(update_fields=["desired_state", "updated_at", "halt_reason", "halt_message", *_begin_run(current)])
    actor.record(current, Event.Kind.RESTART, f"Restart requested (was {previous})", data={"run": current.run_number})
    enqueue.reconcile_soon([current.pk])


def halt(actor, experiment, state, reason, message):
    """A guardrail sets the desired state (STOPPED or TERMINATED), saying which and why, in the timeline.

    The reason stays on the status until the user next changes the desired state.
    """
    _check_state(state)
    _authorize(actor, [experiment])
    with transaction.atomic():
        current = _locked(experiment)
        previous = current.desired_state
        current.desired_state = state
        current.halt_reason, current.halt_message = reason, message
        current.save(update_fields=["desired_state", "halt_reason", "halt_message", "updated_at"])
        actor.record(
            current,
            Event.Kind.GUARDRAIL,
            f"{message} Desired state {previous} → {state}.",
            data={"reason": reason, "from": previous, "to": state, "notify": "guardrail"},
        )
        enqueue.reconcile_soon([current.pk])
    _copy_into(experiment, current)


def set_sweep_budget(actor, sweep, max_cost, limit_action=None):
    """A sweep's budget (None: none) and what reaching it sets; its experiments' timelines say so.

    Raising a spent budget lets the sweep's experiments run again (``over_budget``).
    """
    _authorize(actor, [sweep])
    problems = {}
    if max_cost is not None and (not isinstance(max_cost, (int, float)) or isinstance(max_cost, bool) or max_cost < 0):
        problems["max_cost"] = "The budget is an amount in $, 0 or more (empty: no budget)."
    limit_action = limit_action or sweep.limit_action
    if limit_action not in LimitAction.values:
        problems["limit_action"] = f"At the budget, set the experiments {' or '.join(LimitAction.values)}."
    if problems:
        raise ValidationError(problems)
    with transaction.atomic():
        current = Sweep.objects.select_for_update().get(pk=sweep.pk)
        before = (current.max_cost, current.limit_action)
        current.max_cost = float(max_cost) if max_cost is not None else None
        current.limit_action = limit_action
        if before == (current.max_cost, current.limit_action):
            return current
        current.save(update_fields=["max_cost", "limit_action"])
        said = f"${current.max_cost:,.2f}, then {current.limit_action}" if current.max_cost is not None else "none"
        was = f"${before[0]:,.2f}" if before[0] is not None else "none"
        for child in current.experiments.only("pk", "name"):
            actor.record(child, Event.Kind.INFO, f"Budget of sweep {current.name}: {was} → {said}.")
    sweep.max_cost, sweep.limit_action = current.max_cost, current.limit_action
    return current


def restart(actor, experiment):
    """Cancel the active job (if any) and run the current spec afresh, as a new run."""
    _authorize(actor, [experiment])
    with transaction.atomic():
        current = _locked(experiment)
        _restart(actor, current)
    _copy_into(experiment, current)


def restart_many(actor, experiments):
    experiments = list(experiments)
    _authorize(actor, experiments)
    with transaction.atomic(), enqueue.batched():
        for experiment in experiments:
            current = _locked(experiment)
            _restart(actor, current)
            _copy_into(experiment, current)
    return len(experiments)


def cancel_job(actor, job):
    """Ask for an active job to be cancelled; the reconciler cancels it and does not relaunch for it.

    Returns False when the job is not active (any more).
    """
    _authorize(actor, [job.experiment])
    with transaction.atomic():
        current = Job.objects.select_for_update().select_related("experiment").get(pk=job.pk)
        if current.status not in ACTIVE_JOB_STATUSES:
            return False
        if current.cancel_requested_at is None:
            current.cancel_requested_at = timezone.now()
            current.save(update_fields=["cancel_requested_at"])
            actor.record(
                current.experiment, Event.Kind.CANCEL, f"Cancel of attempt {current.attempt} requested", job=current
            )
        enqueue.reconcile_soon([current.experiment_id])
    job.cancel_requested_at = current.cancel_requested_at
    return True


# --- delete -----------------------------------------------------------------------------------


def delete(actor, experiments):
    """Delete experiments with no job in flight, auditing each; returns (deleted names, kept names).

    An experiment with an active job is kept: deleting it would orphan a running
    process or cluster. Set it STOPPED or TERMINATED first.
    """
    experiments = list(experiments)
    _authorize(actor, experiments)
    ids = [e.pk for e in experiments]
    with transaction.atomic():
        rows = Experiment.objects.select_for_update().filter(pk__in=ids)
        busy = set(rows.filter(jobs__status__in=ACTIVE_JOB_STATUSES).values_list("name", flat=True))
        doomed = list(rows.exclude(name__in=busy).values_list("pk", "name"))
        Experiment.objects.filter(pk__in=[pk for pk, _ in doomed]).delete()
        for _, name in doomed:
            actor.record(None, Event.Kind.DELETE, f"Deleted experiment {name}", data={"name": name})
    return [name for _, name in doomed], sorted(busy)


# --- notifications ---------------------------------------------------------------------------------


def subscribe(actor, *, target, topics, experiment=None, sweep=None):
    """Tell ``target`` about ``topics`` of one experiment, one sweep, or all the actor owns.

    A subscription is the user's own: anyone logged in may follow any experiment (all may
    read it), and only its user sees, tests or ends it. Returns ``(subscription, created)``:
    the same target for the same scope is not subscribed twice.
    """
    if actor.user is None:
        raise PermissionDenied("Log in to be told about experiments.")
    existing = Subscription.objects.filter(
        user=actor.user, target=(target or "").strip(), experiment=experiment, sweep=sweep
    ).first()
    if existing is not None:
        return existing, False
    subscription = Subscription(
        user=actor.user, target=(target or "").strip(), topics=list(topics), experiment=experiment, sweep=sweep
    )
    subscription.full_clean()
    subscription.save()
    return subscription, True


def unsubscribe(actor, subscription):
    """End one of the actor's own subscriptions (its delivery history goes with it)."""
    if actor.user is None or subscription.user_id != actor.user.pk:
        raise PermissionDenied("Only the user who subscribed may change this subscription.")
    subscription.delete()


__all__ = [
    "Actor",
    "Edit",
    "batched",
    "cancel_job",
    "clone",
    "copy_of",
    "create",
    "delete",
    "edit",
    "free_name",
    "restart",
    "restart_many",
    "retag",
    "set_desired_state",
    "set_desired_state_many",
    "star",
    "subscribe",
    "unsubscribe",
]
