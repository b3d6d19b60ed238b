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

from .launch import FLAG_KEY_RE
from .models import (
    ACTIVE_JOB_STATUSES,
    NAME_RE,
    SPEC_FIELDS,
    DesiredState,
    Event,
    Experiment,
    Phase,
    Sweep,
    unique_name,
    validate_not_reserved,
)

MAX_CHILDREN = 500
SCALARS = (str, int, float, bool)
# Copied from the base besides its spec (SPEC_FIELDS): what a child inherits.
INHERITED_FIELDS = ("description", "restart_policy", "max_restarts")


# --- validation -------------------------------------------------------------------


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(path, spec):
    extra = set(spec) - {"min", "max", "log", "type"}
    if extra:
        raise ValidationError(f"{path}: a range takes min, max, log and type, not {', '.join(sorted(extra))}.")
    low, high = spec.get("min"), spec.get("max")
    if not (_is_number(low) and _is_number(high)):
        raise ValidationError(f"{path}: a range needs numeric min and max.")
    if low > high:
        raise ValidationError(f"{path}: min ({low}) is above max ({high}).")
    if not isinstance(spec.get("log", False), bool):
        raise ValidationError(f"{path}: log must be true or false.")
    if spec.get("log") and low <= 0:
        raise ValidationError(f"{path}: a log range needs min above 0.")
    if spec.get("type", None) not in (None, "int", "float"):
        raise ValidationError(f"{path}: type must be int or float.")
    if _range_type(spec) == "int" and math.floor(high) < math.ceil(low):
        raise ValidationError(f"{path}: no whole number lies between min and max.")


def _range_type(spec):
    if spec.get("type"):
        return spec["type"]
    both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
    return "int" if both_int else "float"


def validate_sweep(kind, parameters, samples):
    """Raise ValidationError (by field) unless the sweep can be expanded."""
    if kind not in Sweep.Kind.values:
        raise ValidationError({"kind": f"{kind!r} is not a sweep kind (use grid or random)."})
    if not isinstance(parameters, dict) or not parameters:
        raise ValidationError({"parameters": "Give at least one flag and its values."})
    for path, spec in parameters.items():
        try:
            if not isinstance(path, str) or not FLAG_KEY_RE.match(path) or len(path) > 300:
                raise ValidationError(f"{path!r} is not a valid flag name.")
            if isinstance(spec, list):
                if not spec:
                    raise ValidationError(f"{path}: the list of values is empty.")
                if len(spec) > MAX_CHILDREN:
                    raise ValidationError(f"{path}: at most {MAX_CHILDREN} values.")
                for value in spec:
                    if not isinstance(value, SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
                        raise ValidationError(f"{path}: values must be strings, finite numbers or booleans.")
                    if isinstance(value, str) and ("\x00" in value or not _encodable(value)):
                        raise ValidationError(f"{path}: a value holds characters that cannot be stored.")
            elif isinstance(spec, dict):
                if kind == Sweep.Kind.GRID:
                    raise ValidationError(f"{path}: a grid takes a list of values; ranges are for random sweeps.")
                _check_range(path, spec)
            else:
                raise ValidationError(f"{path}: give a list of values or a {{min, max}} range.")
        except ValidationError as exc:
            raise ValidationError({"parameters": exc.messages}) from None
    if kind == Sweep.Kind.GRID:
        total = math.prod(len(v) for v in parameters.values())
        if total > MAX_CHILDREN:
            raise ValidationError({"parameters": f"The grid has {total} points; at most {MAX_CHILDREN}."})
    else:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValidationError({"samples": "A random sweep needs the number of samples (at least 1)."})
        if samples > MAX_CHILDREN:
            raise ValidationError({"samples": f"At most {MAX_CHILDREN} samples."})


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- expansion ----------------------------------------------------------------------


def _round(value):
    """Six significant digits: readable names, and values a person would type."""
    return float(f"{value:.6g}")


def _sample(rng, spec):
    if isinstance(spec, list):
        return rng.choice(spec)
    low, high, log = spec["min"], spec["max"], spec.get("log", False)
    if _range_type(spec) == "int":
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
    if len(name) > 60 or not NAME_RE.match(name):
        digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{_slug(name[:51])}-{digest}"
    return unique_name(name, taken)


def sweep_tag(sweep_name):
    return f"sweep:{sweep_name}"[:50].rstrip("-")


# --- creation and actions ----------------------------------------------------------------


def create_sweep(*, name, base, kind, parameters, samples=None, seed=None, max_concurrent=None,
                 desired_state=DesiredState.STOPPED, description="", user=None):
    """Validate, then create the sweep and its children in one transaction.

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
        name=name, description=description, base=base, kind=kind, parameters=parameters,
        samples=samples if kind == Sweep.Kind.RANDOM else None, seed=seed if kind == Sweep.Kind.RANDOM else None,
        max_concurrent=max_concurrent or None, created_by=user if user is not None and user.is_authenticated else None,
    )
    sweep.full_clean()
    points = expand(kind, parameters, samples, seed)
    labels = _labels(sorted(parameters))
    # Names are unique across all experiments, not only this sweep's.
    taken = set(Experiment.objects.filter(name__startswith=base.name[:40]).values_list("name", flat=True))
    taken.add(base.name)
    children = []
    for values in points:
        child = Experiment(**{f: getattr(base, f) for f in (*SPEC_FIELDS, *INHERITED_FIELDS)})
        child.name = child_name(base.name, values, labels, taken)
        taken.add(child.name)
        child.flags = {**(base.flags or {}), **values}
        child.tags = [t for t in (base.tags or []) if not t.startswith("sweep:")] + [sweep_tag(sweep.name)]
        child.desired_state = desired_state
        child.created_by = sweep.created_by
        try:
            child.full_clean(exclude=["sweep"])
        except ValidationError as exc:
            raise ValidationError(
                {key: [f"{child.name}: {m}" for m in messages] for key, messages in exc.message_dict.items()}
            ) from None
        children.append(child)
    with transaction.atomic():
        sweep.save()
        for child in children:
            child.sweep = sweep
            if desired_state == DesiredState.RUNNING:
                child.run_number = 1
            child.save()
            Event.record(child, Event.Kind.CREATED, f"Created by sweep {sweep.name}: {json.dumps(child.flags, sort_keys=True)}",
                         user=user, actor="user" if user is not None else "api")
            if desired_state == DesiredState.RUNNING:
                child.reconcile_soon()
    return sweep


def set_state(sweep, state, *, user=None, source="user"):
    """Set every child's desired state; returns how many changed."""
    changed = 0
    for child in sweep.experiments.order_by("id"):
        if child.set_desired_state(state, user=user, source=source):
            changed += 1
    return changed


def failed_children(sweep):
    return sweep.experiments.filter(phase=Phase.FAILED).order_by("id")


def rerun_failed(sweep, *, user=None):
    """Run the failed children again (a fresh run each); returns how many."""
    count = 0
    for child in failed_children(sweep):
        child.request_restart(user=user)
        count += 1
    return count


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
