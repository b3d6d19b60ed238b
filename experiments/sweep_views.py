"""Sweep pages: the list, the form, and a sweep with its children and their states."""

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from skydeck_site.htmx import change_token, page_or_fragment

from . import intent, sweeps
from .models import DesiredState, Experiment, LimitAction, Subscription, Sweep
from .sweep_forms import SweepForm, format_parameters
from .views import spend_of, start_runs


def sweep_list(request):
    rows = (
        Sweep.objects.select_related("base")
        .annotate(
            children=Count("experiments"),
            running=Count("experiments", filter=Q(experiments__phase="RUNNING")),
            succeeded=Count("experiments", filter=Q(experiments__phase="SUCCEEDED")),
            failed=Count("experiments", filter=Q(experiments__phase="FAILED")),
        )
        .order_by("-created_at")
    )
    return render(request, "experiments/sweep_list.html", {"sweeps": rows})


def sweep_create(request):
    initial = {}
    base = request.GET.get("base")
    if base and Experiment.objects.filter(name=base).exists():
        initial["base"] = base
    form = SweepForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            sweep = sweeps.create_sweep(
                intent.Actor.of(request),
                name=data["name"],
                base=data["base"],
                kind=data["kind"],
                parameters=data["parameters"],
                samples=data["samples"],
                seed=data["seed"],
                max_concurrent=data["max_concurrent"],
                max_cost=data["max_cost"],
                limit_action=data["limit_action"],
                desired_state=data["desired_state"],
                description=data["description"],
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                target = field if field in form.fields else None
                for error in errors:
                    form.add_error(target, error)
        else:
            messages.success(request, f"Created sweep {sweep.name} with {sweep.experiments.count()} experiments.")
            return redirect(sweep)
    return render(request, "experiments/sweep_form.html", {"form": form})


# Names listed in the preview; the rest are counted.
PREVIEW_NAMES = 12


@require_POST
def sweep_preview(request):
    """How many experiments the half-filled form would create, and their names (nothing is written)."""
    form = SweepForm(request.POST)
    form.is_valid()
    data = form.cleaned_data
    context = {"problem": "", "children": [], "count": 0, "seedless": False}
    if not (request.POST.get("base") and request.POST.get("parameters", "").strip()):
        return render(request, "experiments/sweep_form.html#preview", context)
    for field in ("base", "kind", "parameters", "samples", "seed"):
        if field in form.errors:
            context["problem"] = f"{form[field].label}: {' '.join(form.errors[field])}"
            break
    else:
        kind, seed = data["kind"], data.get("seed")
        try:
            children = sweeps.plan_children(data["base"], kind, data["parameters"], data.get("samples"), seed)
        except ValidationError as exc:
            context["problem"] = " ".join(exc.messages)
        else:
            context.update(
                children=children[:PREVIEW_NAMES],
                count=len(children),
                more=max(0, len(children) - PREVIEW_NAMES),
                seedless=kind == Sweep.Kind.RANDOM and seed is None,
            )
    return render(request, "experiments/sweep_form.html#preview", context)


def sweep_detail(request, name):
    sweep = get_object_or_404(Sweep.objects.select_related("base"), name=name)
    children = list(sweep.experiments.prefetch_related("jobs").order_by("id"))
    counts = sweeps.counts(sweep)
    spent = sweep.spent()
    spend, over_budget = spend_of(spent, sweep.max_cost)
    token = change_token(
        [(e.pk, e.phase, e.desired_state, e.status_reason, e.status_message, [(j.pk, j.status) for j in e.jobs.all()])
         for e in children],
        counts,
    )  # fmt: skip
    context = {
        "sweep": sweep,
        "children": children,
        "counts": counts,
        "parameters_text": format_parameters(sweep.parameters),
        "paths": sorted(sweep.parameters),
        "failed_count": sum(1 for e in children if e.phase == "FAILED"),
        "token": token,
        "spent": spent,
        "spend": spend,
        "over_budget": over_budget,
        "may_change": intent.Actor.of(request).may_change(sweep),
        "limit_actions": LimitAction.choices,
    }
    context["subscribed"] = Subscription.objects.filter(user=request.user, sweep=sweep).exists()
    return page_or_fragment(request, "experiments/sweep_detail.html", "children", context, token=token)


def _sweep_action(request, sweep, change, describe):
    try:
        n = change(intent.Actor.of(request))
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, describe(n))
    return redirect(sweep)


@require_POST
def sweep_set_state(request, name):
    sweep = get_object_or_404(Sweep, name=name)
    state = request.POST.get("state", "")
    if state not in DesiredState.values:
        messages.error(request, f"{state!r} is not a desired state.")
        return redirect(sweep)
    if state == DesiredState.RUNNING:
        children = list(sweep.experiments.order_by("id"))
        if not children:
            messages.info(request, f"{sweep.name} has no experiments.")
            return redirect(sweep)
        return _sweep_action(
            request, sweep, lambda actor: start_runs(actor, children), lambda started: started.sentence()
        )
    return _sweep_action(
        request,
        sweep,
        lambda actor: sweeps.set_state(actor, sweep, state),
        lambda n: f"{n} experiment{'s' if n != 1 else ''} of {sweep.name} set to {state}.",
    )


@require_POST
def sweep_rerun_failed(request, name):
    sweep = get_object_or_404(Sweep, name=name)
    return _sweep_action(
        request,
        sweep,
        lambda actor: sweeps.rerun_failed(actor, sweep),
        lambda n: f"Running {n} failed experiment{'s' if n != 1 else ''} again." if n else "No experiment has failed.",
    )


@require_POST
def sweep_budget(request, name):
    """Set, raise or clear a sweep's budget (a spent one lets its experiments run again)."""
    sweep = get_object_or_404(Sweep, name=name)
    raw = request.POST.get("max_cost", "").strip().lstrip("$").replace(",", "")
    try:
        max_cost = float(raw) if raw else None
    except ValueError:
        messages.error(request, f"{raw!r} is not an amount in $: write it like 25 or 12.50 (empty: no budget).")
        return redirect(sweep)
    try:
        intent.set_sweep_budget(intent.Actor.of(request), sweep, max_cost, request.POST.get("limit_action") or None)
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        said = f"${sweep.max_cost:,.2f}" if sweep.max_cost is not None else "none"
        messages.success(request, f"Budget of {sweep.name}: {said}.")
    return redirect(sweep)
