"""Sweeps: a set of experiments made from a base experiment and a grid or random samples.

``parameters`` maps a flag path to what it takes:

* a list of values — every one of them (grid) or one picked per sample (random);
* ``{"min": a, "max": b}`` with optional ``"log": true`` and ``"type": "int"|"float"``
  — a numeric range, random sweeps only.

The reconciler holds ``max_concurrent``: children beyond it wait with the
reason ``WaitingForSweepSlot`` and start as running ones finish.
"""

import hashlib
import itertools
import json
import math
import random
import re

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count

from . import intent
from .models import ACTIVE_JOB_STATUSES, DesiredState, Experiment, Phase, Sweep
from .validators import (
    MAX_SWEEP_CHILDREN,
    NAME_RE,
    range_type,
    unique_name,
    validate_not_reserved,
    validate_sweep,
)

MAX_CHILDREN = MAX_SWEEP_CHILDREN


# --- expansion ----------------------------------------------------------------------


def _round(value):
    """Six significant digits: readable names, and values a person would type."""
    return float(f"{value:.6g}")


def _sample(rng, spec):
    if isinstance(spec, list):
        return rng.choice(spec)
    low, high, log = spec["min"], spec["max"], spec.get("log", False)
    if range_type(spec) == "int":
        low, high = math.ceil(low), math.floor(high)
        if log:
            return min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high))))))
        return rng.randint(low, high)
    if log:
        return _round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return _round(rng.uniform(low, high))


def expand(kind, parameters, samples=None, seed=None):
    """The list of flag values, one dict per child, in a stable order.

    Flags are taken in sorted order (a JSON column may not keep key order), so
    a grid varies its last flag fastest and a seeded random sweep repeats.
    """
    validate_sweep(kind, parameters, samples)
    paths = sorted(parameters)
    if kind == Sweep.Kind.GRID:
        return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*(parameters[p] for p in paths))]
    rng = random.Random(seed)
    return [{p: _sample(rng, parameters[p]) for p in paths} for _ in range(samples)]


# --- naming ---------------------------------------------------------------------------


def _slug(text):
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")


def _value_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if text.startswith("-"):
        text = "m" + text[1:]
    return _slug(text.replace(".", "p"))


def _labels(paths):
    """Short labels: the last part of each path, or the whole path when two share it."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    if len(set(last)) == len(last):
        return dict(zip(paths, (_slug(x) for x in last), strict=True))
    return {p: _slug(p) for p in paths}


def child_name(base_name, values, labels, taken):
    """``<base>-<flag><value>-…``, at most 60 characters, and not in ``taken``."""
    parts = [f"{labels[p]}{_value_text(v)}" for p, v in sorted(values.items())]
    name = _slug("-".join([base_name, *parts]))
    if len(name) > 60 or not NAME_RE.fullmatch(name):
        digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{_slug(name[:51])}-{digest}"
    return unique_name(name, taken)


def sweep_tag(sweep_name):
    return f"sweep:{sweep_name}"[:50].rstrip("-")


# --- creation and actions ----------------------------------------------------------------


def create_sweep(
    actor,
    *,
    name,
    base,
    kind,
    parameters,
    samples=None,
    seed=None,
    max_concurrent=None,
    max_cost=None,
    limit_action=DesiredState.STOPPED,
    desired_state=DesiredState.STOPPED,
    description="",
):
    """Validate, then create the sweep and its children (through ``intent.create``) in one transaction.

    Raises ValidationError keyed by field (``flags`` errors name the child and the flag).
    """
    try:
        validate_not_reserved(name)
    except ValidationError as exc:
        raise ValidationError({"name": exc.messages}) from None
    if desired_state not in DesiredState.values:
        raise ValidationError({"desired_state": f"{desired_state!r} is not a desired state."})
    if kind == Sweep.Kind.RANDOM and seed is None:
        seed = random.SystemRandom().randrange(2**31)  # stored, so the sweep can be repeated
    sweep = Sweep(
        name=name,
        description=description,
        base=base,
        kind=kind,
        parameters=parameters,
        samples=samples if kind == Sweep.Kind.RANDOM else None,
        seed=seed if kind == Sweep.Kind.RANDOM else None,
        max_concurrent=max_concurrent or None,
        max_cost=max_cost,
        limit_action=limit_action,
        created_by=actor.user,
        owner=actor.user,
        group=base.group,
    )
    sweep.full_clean()
    children = plan_children(base, kind, parameters, samples, seed)
    with transaction.atomic(), intent.batched():
        sweep.save()
        for child_name, values in children:
            child = intent.copy_of(base, name=child_name, sweep=sweep)
            child.flags = {**(base.flags or {}), **values}
            child.tags = [t for t in child.tags if not t.startswith("sweep:")] + [sweep_tag(sweep.name)]
            child.description = describe_child(values)
            try:
                intent.create(
                    actor,
                    child,
                    desired_state=desired_state,
                    message=f"Created by sweep {sweep.name}",
                    data={"sweep": sweep.name, "values": values},
                )
            except ValidationError as exc:
                raise ValidationError(
                    {key: [f"{child.name}: {m}" for m in messages] for key, messages in exc.message_dict.items()}
                ) from None
    return sweep


def plan_children(base, kind, parameters, samples=None, seed=None):
    """The children a sweep would make: ``[(name, values)]``, in order (nothing is written)."""
    points = expand(kind, parameters, samples, seed)
    labels = _labels(sorted(parameters))
    # Names are unique across all experiments, not only this sweep's.
    taken = Experiment.objects.names_like(base.name[:40]) | {base.name}
    children = []
    for values in points:
        name = child_name(base.name, values, labels, taken)
        taken.add(name)
        children.append((name, values))
    return children


def describe_child(values):
    """What a child varies, in words: ``lr=0.01, layers=4``."""
    return ", ".join(
        f"{path}={json.dumps(value) if isinstance(value, str) else value}" for path, value in sorted(values.items())
    )


def set_state(actor, sweep, state):
    """Set every child's desired state; returns how many changed."""
    return intent.set_desired_state_many(actor, sweep.experiments.order_by("id"), state)


def failed_children(sweep):
    return sweep.experiments.filter(phase=Phase.FAILED).order_by("id")


def rerun_failed(actor, sweep):
    """Run the failed children again (a fresh run each); returns how many."""
    return intent.restart_many(actor, failed_children(sweep))


def counts(sweep):
    """Children by phase and by desired state, plus how many have a job in flight."""
    children = sweep.experiments.all()
    by_phase = dict(children.order_by().values_list("phase").annotate(n=Count("id")))
    by_desired = dict(children.order_by().values_list("desired_state").annotate(n=Count("id")))
    active = children.filter(jobs__status__in=ACTIVE_JOB_STATUSES).distinct().count()
    return {"total": sum(by_phase.values()), "by_phase": by_phase, "by_desired_state": by_desired, "active": active}


def waiting_siblings(experiment_ids):
    """Children of the same sweeps waiting for a slot: worth a reconcile when a sibling changes."""
    sweep_ids = (
        Experiment.objects.filter(pk__in=list(experiment_ids), sweep__max_concurrent__isnull=False)
        .values_list("sweep_id", flat=True)
        .distinct()
    )
    return set(
        Experiment.objects.filter(
            sweep_id__in=list(sweep_ids), desired_state=DesiredState.RUNNING, status_reason="WaitingForSweepSlot"
        ).values_list("id", flat=True)
    )
