"""Files in the dashboard: import a SkyPilot task YAML, download an experiment or job as one, export
experiments as a skydeck.yaml, and the plan a bulk action shows before it runs.

Reading a task YAML here is SkyDeck's own reading of SkyPilot's schema (``experiments.files``): the
web process never imports SkyPilot.
"""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from clusters.backends import BackendError
from clusters.models import Backend

from . import files, intent
from .filters import ExperimentFilter
from .launch import build_command
from .models import DesiredState, Experiment, Job
from .validators import NAME_HELP

MAX_UPLOAD_BYTES = 1024 * 1024
PLANNED_STATES = {
    DesiredState.RUNNING: ("Run", "Set RUNNING"),
    DesiredState.STOPPED: ("Stop", "Set STOPPED"),
    DesiredState.TERMINATED: ("Terminate", "Terminate"),
}


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def _yaml(text, filename):
    response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- import ------------------------------------------------------------------------------------------


class ImportForm(forms.Form):
    task = forms.CharField(
        label="SkyPilot task YAML",
        required=False,
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false", "class": "mono"}),
        help_text="Paste the YAML you give sky launch, or upload the file below.",
    )
    upload = forms.FileField(label="…or upload it", required=False)
    source = forms.CharField(required=False, widget=forms.HiddenInput)
    name = forms.CharField(
        label="Name", required=False, max_length=60, help_text=f"Empty: the task's name. {NAME_HELP}"
    )
    backend = forms.ChoiceField(label="Backend", choices=Backend.choices, initial=Backend.SKYPILOT)
    workdir = forms.CharField(
        label="Workdir on SkyDeck's worker",
        required=False,
        max_length=500,
        help_text="Replaces the task's workdir (a relative one means nothing to the worker).",
    )
    desired_state = forms.ChoiceField(label="Desired state", choices=DesiredState.choices, initial=DesiredState.STOPPED)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        enabled = set(settings.SKYDECK_BACKENDS)
        self.fields["backend"].choices = [c for c in Backend.choices if c[0] in enabled] or Backend.choices

    def clean(self):
        data = super().clean()
        upload = data.get("upload")
        if upload is not None:
            if upload.size > MAX_UPLOAD_BYTES:
                raise ValidationError(f"The file is over {MAX_UPLOAD_BYTES // 1024} KiB.")
            try:
                data["task"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError("The file is not UTF-8 text.") from None
            data["source"] = upload.name
        if not (data.get("task") or "").strip():
            raise ValidationError("Paste a SkyPilot task YAML, or upload one.")
        data["source"] = data.get("source") or "pasted task"
        return data


def _preview_rows(experiment):
    rows = [
        ("Command line", build_command(experiment.command, experiment.flags, experiment.flag_style)),
        ("Backend", experiment.backend),
    ]
    for label, value in (
        ("Accelerators", experiment.accelerators),
        ("Nodes", experiment.num_nodes if experiment.num_nodes != 1 else ""),
        ("CPUs", experiment.cpus),
        ("Memory", experiment.memory),
        ("Infra", experiment.infra),
        ("Spot", "yes" if experiment.use_spot else ""),
        ("Disk (GB)", experiment.disk_size or ""),
        ("Image", experiment.image_id),
        ("Workdir", experiment.workdir),
        ("Envs", ", ".join(f"{k}={v}" for k, v in sorted(experiment.envs.items()))),
        ("Setup", experiment.setup),
        ("Idle", "kept up" if experiment.keep_cluster_up else ""),
        ("Idle minutes", experiment.autostop_minutes if experiment.autostop_minutes is not None else ""),
    ):
        if value not in ("", None):
            rows.append((label, value))
    return [(label, str(value), "\n" in str(value).strip()) for label, value in rows]


def _import_page(request, form, preview=None):
    taken = preview is not None and Experiment.objects.filter(name=preview.name).exists()
    return render(
        request,
        "experiments/files/import.html",
        {
            "form": form,
            "preview": preview,
            "preview_rows": _preview_rows(preview) if preview is not None else [],
            "name_taken": taken,
            "free_name": intent.free_name(preview.name) if taken else "",
        },
    )


@require_http_methods(["GET", "POST"])
def import_task(request):
    """Paste or upload a task YAML, see the experiment it makes (Preview), then create it through intent."""
    if request.method == "GET":
        return _import_page(request, ImportForm())
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return _import_page(request, form)
    data = form.cleaned_data
    # An upload is read once: its text goes into the form shown, so that Create posts it again.
    shown = request.POST.copy()
    shown["task"], shown["source"] = data["task"], data["source"]
    form = ImportForm(shown)
    form.is_valid()
    options = {
        "source": data["source"],
        "name": data["name"].strip() or None,
        "backend": data["backend"],
        "desired_state": data["desired_state"],
        "workdir": data["workdir"].strip() or None,
    }
    actor = intent.Actor.of(request)
    try:
        if "create" not in request.POST:
            return _import_page(request, form, files.experiment_from_task(data["task"], actor=actor, **options))
        experiment = files.import_task(actor, data["task"], **options)
    except files.FileInvalid as exc:
        for problem in exc.problems:
            form.add_error(None, str(problem))
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            for error in errors:
                form.add_error(field if field in form.fields else None, error)
    else:
        messages.success(request, f"Imported {experiment.name} from {data['source']}.")
        return redirect(experiment)
    return _import_page(request, form)


# --- export ------------------------------------------------------------------------------------------


@require_GET
def experiment_task(request, name):
    """The experiment as the SkyPilot task YAML SkyDeck launches for it."""
    experiment = get_object_or_404(Experiment, name=name)
    try:
        return _yaml(files.experiment_task_yaml(experiment), f"{experiment.name}.yaml")
    except (BackendError, ValidationError) as exc:
        messages.error(request, f"{experiment.name} cannot be written as a SkyPilot task: {exc}")
        return redirect(experiment)


@require_GET
def job_task(request, name, attempt):
    """What one job ran, as a SkyPilot task YAML."""
    job = get_object_or_404(Job.objects.select_related("experiment"), experiment__name=name, attempt=attempt)
    try:
        return _yaml(files.job_task_yaml(job), f"{job.name}.yaml")
    except (BackendError, ValidationError) as exc:
        messages.error(request, f"{job.name} cannot be written as a SkyPilot task: {exc}")
        return redirect(job)


def _filtered(request, data):
    """The list page's filters ("Mine" by default for a user who owns any experiment)."""
    data = data.copy()
    if "who" not in data:
        data["who"] = "mine" if Experiment.objects.owned_by(request.user).exists() else "all"
    return ExperimentFilter(data, queryset=Experiment.objects.select_related("sweep"), request=request).qs


@require_http_methods(["GET", "POST"])
def export_set(request):
    """A skydeck.yaml of the experiments chosen on the list: the ticked rows, or all matching the filters.

    GET takes the list's filters as its query; POST takes the bulk form (``selected``, or ``all_matching``
    with the list's ``query``).
    """
    if request.method == "GET":
        experiments = _filtered(request, request.GET)
    elif request.POST.get("all_matching"):
        experiments = _filtered(request, QueryDict(request.POST.get("query", "")))
    else:
        ids = [i for i in request.POST.getlist("selected") if i.isdigit()]
        experiments = Experiment.objects.filter(pk__in=ids).select_related("sweep")
    return _yaml(files.export_file(list(experiments)), "skydeck.yaml")


# --- the plan of a bulk action -----------------------------------------------------------------------------


def render_bulk_plan(request, experiments, state, *, back):
    """The plan page of a bulk "set desired state": what will launch, stop, be torn down, and what already is.

    Its button posts the same bulk form again with ``confirmed=1``; ``back`` is where Cancel goes.
    """
    rows = files.plan_desired_state(experiments, state, intent.Actor.of(request))
    verb, label = PLANNED_STATES[state]
    fields = [
        (k, v) for k, values in request.POST.lists() if k not in {"csrfmiddlewaretoken", "confirmed"} for v in values
    ]
    title = (
        f"Terminate {plural(len(rows), 'experiment')}?"
        if state == DesiredState.TERMINATED
        else f"{label} on {plural(len(rows), 'experiment')}?"
    )
    return render(
        request,
        "experiments/files/bulk_plan.html",
        {
            "title": title,
            "rows": rows,
            "summary": files.summarize_state_plan(rows),
            "state": state,
            "fields": fields,
            "action": reverse("experiments:bulk"),
            "action_label": f"{verb} {sum(1 for r in rows if r.action not in ('already', 'refused'))}",
            "danger": state == DesiredState.TERMINATED,
            "cancel_url": back,
            "nothing_to_do": all(r.action in ("already", "refused") for r in rows),
        },
    )
