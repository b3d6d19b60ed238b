"""Sweep pages: the list, the form, and a sweep with its children and their states."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import sweeps
from .models import DesiredState, Experiment, Sweep
from .sweep_forms import SweepForm, format_parameters


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
                name=data["name"], base=data["base"], kind=data["kind"], parameters=data["parameters"],
                samples=data["samples"], seed=data["seed"], max_concurrent=data["max_concurrent"],
                desired_state=data["desired_state"], description=data["description"], user=request.user,
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


def sweep_detail(request, name):
    sweep = get_object_or_404(Sweep.objects.select_related("base"), name=name)
    children = sweep.experiments.prefetch_related("jobs").order_by("id")
    context = {
        "sweep": sweep,
        "children": children,
        "counts": sweeps.counts(sweep),
        "parameters_text": format_parameters(sweep.parameters),
        "paths": sorted(sweep.parameters),
        "failed_count": sweeps.failed_children(sweep).count(),
    }
    if getattr(request, "htmx", False):
        return render(request, "experiments/sweep_detail.html#children", context)
    return render(request, "experiments/sweep_detail.html", context)


@require_POST
def sweep_set_state(request, name):
    sweep = get_object_or_404(Sweep, name=name)
    state = request.POST.get("state", "")
    if state not in DesiredState.values:
        messages.error(request, f"{state!r} is not a desired state.")
    else:
        changed = sweeps.set_state(sweep, state, user=request.user)
        messages.success(request, f"{changed} experiment{'s' if changed != 1 else ''} of {sweep.name} set to {state}.")
    return redirect(sweep)


@require_POST
def sweep_rerun_failed(request, name):
    sweep = get_object_or_404(Sweep, name=name)
    count = sweeps.rerun_failed(sweep, user=request.user)
    messages.success(request, f"Running {count} failed experiment{'s' if count != 1 else ''} again." if count else "No experiment has failed.")
    return redirect(sweep)
