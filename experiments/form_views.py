"""The experiment form: create, edit and clone, with its flag editor and command preview."""

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms import BooleanField
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from . import intent
from .forms import (
    FLAG_TYPES,
    SKYPILOT_ONLY,
    ExperimentForm,
    FlagRow,
    describe_schema,
    new_uid,
    preview_command,
    rows_from_data,
)
from .launch import build_command
from .models import DesiredState, Experiment, FlagSchema
from .validators import FlagType


def _form_page(request, form, *, experiment=None, clone_of=None):
    return render(
        request,
        "experiments/form.html",
        {
            "form": form,
            "experiment": experiment,
            "clone_of": clone_of,
            "flag_types": FLAG_TYPES,
            "preview": preview_command(form.data) if form.is_bound else _initial_preview(form),
            "skypilot_fields": [form[f] for f in SKYPILOT_ONLY if not isinstance(form.fields[f], BooleanField)],
            "skypilot_checks": [form[f] for f in SKYPILOT_ONLY if isinstance(form.fields[f], BooleanField)],
        },
    )


def _initial_preview(form):
    command = form.initial.get("command") or form.instance.command
    flags = form.initial.get("flags") or form.instance.flags or {}
    try:
        return build_command(command, flags, form.initial.get("flag_style") or form.instance.flag_style), ""
    except ValidationError:
        return None, "Type a command to see the line that will run."


def _errors_onto(form, exc):
    """A refusal from intent, shown on the form's fields."""
    for field, errors in exc.message_dict.items() if hasattr(exc, "error_dict") else [(None, exc.messages)]:
        target = field if field in form.fields else None
        for error in errors:
            form.add_error(target, error)


def experiment_create(request):
    if request.method == "POST":
        form = ExperimentForm(request.POST)
        if form.is_valid():
            desired = form.cleaned_data["desired_state"]
            experiment = Experiment(name=form.cleaned_data["name"], **form.changes())
            clone_of = request.POST.get("clone_of", "")
            source = Experiment.objects.filter(name=clone_of).first() if clone_of else None
            try:
                intent.create(
                    intent.Actor.of(request),
                    experiment,
                    desired_state=desired,
                    message=f"Cloned from {source.name}" if source else "Created",
                    data={"source": source.name} if source else None,
                )
            except ValidationError as exc:
                _errors_onto(form, exc)
            else:
                messages.success(
                    request, f"Created {experiment.name}" + (f" and set it {desired}." if desired != "STOPPED" else ".")
                )
                return redirect(experiment)
    else:
        form = ExperimentForm(
            initial={"backend": settings.SKYDECK_DEFAULT_BACKEND, "desired_state": DesiredState.STOPPED}
        )
    return _form_page(request, form)


@require_GET
def experiment_clone(request, name):
    source = get_object_or_404(Experiment, name=name)
    initial = {f: getattr(source, f) for f in intent.CLONED_FIELDS if f != "sweep"}
    initial.update(name=intent.free_name(f"{source.name}-copy"), desired_state=DesiredState.STOPPED)
    form = ExperimentForm(initial=initial)
    return _form_page(request, form, clone_of=source)


def experiment_edit(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    if request.method == "POST":
        form = ExperimentForm(request.POST, instance=experiment)
        if form.is_valid():
            changes = {**form.changes(), "desired_state": form.cleaned_data["desired_state"]}
            try:
                result = intent.edit(
                    intent.Actor.of(request), experiment, changes, restart=bool(form.cleaned_data.get("restart_now"))
                )
            except (ValidationError, PermissionDenied) as exc:
                if isinstance(exc, PermissionDenied):
                    messages.error(request, str(exc))
                    return redirect(experiment)
                _errors_onto(form, exc)
            else:
                if result.restarted:
                    messages.success(request, f"Saved {experiment.name} and restarting it with the new spec.")
                elif result.running_old_spec is not None:
                    messages.warning(
                        request,
                        f"Saved. Attempt {result.running_old_spec.attempt} keeps running the previous spec; "
                        "the change applies when you restart.",
                    )
                elif result.changed or result.desired_changed:
                    messages.success(request, f"Saved {experiment.name}.")
                else:
                    messages.info(request, f"Nothing changed in {experiment.name}.")
                return redirect(experiment)
    else:
        form = ExperimentForm(instance=experiment)
    return _form_page(request, form, experiment=experiment)


@require_GET
def flag_row(request):
    """One row of the flag editor, fitted to what the schema knows about its key."""
    uid = request.GET.get("uid") or new_uid()
    if not uid.isalnum() or len(uid) > 32:
        uid = new_uid()
    rows = rows_from_data(request.GET) if request.GET.get("uid") else []
    row = rows[0] if rows else FlagRow(uid=uid)
    schema = FlagSchema.objects.describing([row.key]).get(row.key)
    if schema is not None and request.GET.get("adopt") != "0":
        if schema.type in {FlagType.INTEGER, FlagType.FLOAT, FlagType.BOOLEAN, FlagType.STRING}:
            row.type = schema.type
        if not row.raw and schema.default is not None:
            row.raw = ("true" if schema.default else "") if isinstance(schema.default, bool) else str(schema.default)
    describe_schema(row, schema)
    return render(request, "experiments/form.html#flag_row", {"row": row, "flag_types": FLAG_TYPES})


@require_GET
def flag_search(request):
    """Known flag paths for the typeahead, best first (prefix matches, then segments, then anywhere)."""
    q = request.GET.get("q", "").strip()
    for name, value in request.GET.items():
        if name.endswith("-key") and not q:
            q = value.strip()
    return render(request, "experiments/form.html#flag_options", {"schemas": FlagSchema.objects.search(q, limit=20)})


@require_POST
def command_preview(request):
    return render(request, "experiments/form.html#preview", {"preview": preview_command(request.POST)})
