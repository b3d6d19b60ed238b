from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .forms import ExperimentForm
from .models import DesiredState, Event, Experiment


def experiment_list(request):
    experiments = Experiment.objects.prefetch_related("jobs").order_by("-created_at")
    return render(request, "experiments/list.html", {"experiments": experiments})


def experiment_create(request):
    form = ExperimentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        experiment = form.save(commit=False)
        experiment.created_by = request.user
        experiment.save()
        Event.record(experiment, Event.Kind.CREATED, "Created", user=request.user)
        if experiment.desired_state == DesiredState.RUNNING:
            experiment.run_number = 1
            experiment.save(update_fields=["run_number"])
            experiment.reconcile_soon()
        messages.success(request, f"Created {experiment.name}.")
        return redirect(experiment)
    return render(request, "experiments/form.html", {"form": form})


def experiment_detail(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    return render(
        request,
        "experiments/detail.html",
        {"experiment": experiment, "jobs": experiment.jobs.all(), "events": experiment.events.all()[:50]},
    )


@require_POST
def experiment_set_state(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    try:
        if experiment.set_desired_state(request.POST.get("state", ""), user=request.user):
            messages.success(request, f"{experiment.name} set to {experiment.desired_state}.")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect(experiment)


def job_detail(request, name, attempt):
    experiment = get_object_or_404(Experiment, name=name)
    job = get_object_or_404(experiment.jobs, attempt=attempt)
    return render(request, "experiments/job_detail.html", {"experiment": experiment, "job": job})
