"""Dashboard pages for experiments and jobs.

Polled fragments carry a change token: the client sends the token of what it
shows, and when nothing changed the server answers 204, which htmx leaves
alone, so an unchanged table is neither rendered nor sent.
"""

import hashlib
import json
import time
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.http import HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from clusters.backends import get_backend
from clusters.backends.base import BackendError

from .ansi import ansi_to_html
from .launch import build_command
from .forms import (
    FLAG_TYPES,
    ExperimentFilterForm,
    ExperimentForm,
    FlagRow,
    describe_schema,
    new_uid,
    preview_command,
    rows_from_data,
    schemas_for,
)
from .templatetags.dashboard import wandb_url
from .models import ACTIVE_JOB_STATUSES, DesiredState, Event, Experiment, FlagSchema, Job, unique_name

MAX_FLAG_COLUMNS = 8
JOB_HISTORY_LIMIT = 100
EVENT_LIMIT = 100
BULK_ACTIONS = {
    "RUNNING": "Set RUNNING",
    "STOPPED": "Set STOPPED",
    "TERMINATED": "Set TERMINATED",
    "clone": "Clone",
    "tag_add": "Add tag",
    "tag_remove": "Remove tag",
    "star": "Star",
    "unstar": "Unstar",
    "delete": "Delete",
}
DESTRUCTIVE = {"TERMINATED", "delete"}
_MISSING = object()


# --- helpers ------------------------------------------------------------------


def change_token(*parts):
    """A short digest of what a fragment shows."""
    return hashlib.blake2b(json.dumps(parts, default=str, sort_keys=True).encode(), digest_size=12).hexdigest()


def unchanged(request, token):
    return bool(request.htmx) and request.GET.get("token") == token


def safe_next(request, default):
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def confirm(request, *, title, message, items=(), action_label, danger=True):
    """A confirmation page that posts the same form again with confirmed=1."""
    fields = [(k, v) for k, values in request.POST.lists() if k not in {"csrfmiddlewaretoken", "confirmed"} for v in values]
    return render(
        request,
        "confirm.html",
        {
            "title": title,
            "message": message,
            "items": list(items)[:50],
            "more": max(0, len(items) - 50),
            "fields": fields,
            "action": request.path,
            "action_label": action_label,
            "danger": danger,
            "cancel_url": safe_next(request, reverse("experiments:list")),
        },
    )


def list_queryset():
    """Experiments with the id of their last job (one index probe per row shown)."""
    last = Job.objects.filter(experiment=OuterRef("pk")).order_by("-attempt").values("pk")[:1]
    return Experiment.objects.defer("setup", "envs", "status_message", "image_id", "workdir").annotate(
        last_job_id=Subquery(last)
    )


def attach_last_jobs(rows):
    """Fetch the rows' last jobs in one query and hang their summary on each row."""
    ids = [e.last_job_id for e in rows if e.last_job_id]
    jobs = {j.pk: j for j in Job.objects.filter(pk__in=ids).only("attempt", "status", "started_at", "ended_at", "generation")}
    for e in rows:
        job = jobs.get(e.last_job_id)
        e.last_job_attempt = job.attempt if job else None
        e.last_job_status = job.status if job else None
        e.last_job_started = job.started_at if job else None
        e.last_job_ended = job.ended_at if job else None
        e.last_job_generation = job.generation if job else None
    return rows


def differing_flags(rows):
    """Flag paths whose value is not the same on every row shown."""
    keys = sorted({k for e in rows for k in (e.flags or {})})
    differ = []
    for key in keys:
        values = {json.dumps((e.flags or {}).get(key, None), sort_keys=True) if key in (e.flags or {}) else "∅" for e in rows}
        if len(values) > 1:
            differ.append(key)
    return differ


def _list_context(request):
    filters = ExperimentFilterForm(request.GET or None)
    queryset = filters.filter(list_queryset())
    paginator = Paginator(queryset, filters.page_size)
    page = paginator.get_page(request.GET.get("page"))
    rows = attach_last_jobs(list(page.object_list))
    flag_columns = differing_flags(rows)
    query = request.GET.copy()
    for key in ("token", "selected", "page"):
        query.pop(key, None)
    selected = set(request.GET.getlist("selected"))
    token = change_token(
        query.urlencode(),
        page.number,
        paginator.count,
        [
            (e.pk, e.name, e.description, e.phase, e.desired_state, e.status_reason, e.starred, e.tags, e.flags, e.backend,
             e.accelerators, e.num_nodes, e.infra, e.use_spot, e.generation, e.last_job_attempt, e.last_job_status,
             e.last_job_started, e.last_job_ended, e.last_job_generation)
            for e in rows
        ],
        # Ages and durations tick: let the table refresh once a minute.
        int(time.time() // 60),
        sorted(selected),
    )
    return {
        "filters": filters,
        "page": page,
        "paginator": paginator,
        "experiments": rows,
        "flag_columns": flag_columns[:MAX_FLAG_COLUMNS],
        "hidden_flag_columns": len(flag_columns) - MAX_FLAG_COLUMNS if len(flag_columns) > MAX_FLAG_COLUMNS else 0,
        "query": query.urlencode(),
        "selected": selected,
        "token": token,
        "bulk_actions": BULK_ACTIONS,
        "filtered": filters.active_count > 0,
        "active_statuses": ACTIVE_JOB_STATUSES,
    }


# --- the list -----------------------------------------------------------------


@require_GET
def experiment_list(request):
    context = _list_context(request)
    if request.htmx and not request.htmx.history_restore_request:
        if unchanged(request, context["token"]):
            return HttpResponse(status=204)
        return render(request, "experiments/list.html#table", context)
    return render(request, "experiments/list.html", context)


@require_POST
def experiment_star(request, name):
    experiment = get_object_or_404(Experiment.objects.only("pk", "name", "starred"), name=name)
    starred = request.POST.get("starred", "toggle")
    experiment.starred = (not experiment.starred) if starred == "toggle" else starred in {"1", "true", "on"}
    Experiment.objects.filter(pk=experiment.pk).update(starred=experiment.starred)
    if request.htmx:
        return render(request, "experiments/list.html#star", {"e": experiment})
    return redirect(safe_next(request, reverse("experiments:list")))


@require_POST
def experiment_bulk(request):
    action = request.POST.get("action", "")
    query = request.POST.get("query", "")
    back = reverse("experiments:list") + (f"?{query}" if query else "")
    if action not in BULK_ACTIONS:
        messages.error(request, "Choose an action to apply.")
        return redirect(back)
    if request.POST.get("all_matching"):
        queryset = ExperimentFilterForm(QueryDict(query) or None).filter(Experiment.objects.all())
    else:
        ids = [i for i in request.POST.getlist("selected") if i.isdigit()]
        queryset = Experiment.objects.filter(pk__in=ids).order_by("name")
    experiments = list(queryset)
    if not experiments:
        messages.error(request, "No experiments selected: tick some rows, or “all matching”.")
        return redirect(back)
    tag = request.POST.get("tag", "").strip()
    if action in {"tag_add", "tag_remove"}:
        from .models import TAG_RE

        if not TAG_RE.match(tag):
            messages.error(request, "Give a tag: letters, digits and _ . : / - (at most 50).")
            return redirect(back)
    if action in DESTRUCTIVE and not request.POST.get("confirmed"):
        verb = "Delete" if action == "delete" else "Terminate"
        detail = (
            "Their job history and events are deleted too. Experiments with a job still running are skipped."
            if action == "delete"
            else "Running jobs are cancelled and clusters torn down (disks are lost)."
        )
        return confirm(
            request,
            title=f"{verb} {len(experiments)} experiment{'s' if len(experiments) != 1 else ''}?",
            message=detail,
            items=[e.name for e in experiments],
            action_label=f"{verb} {len(experiments)}",
        )
    done = getattr(_Bulk, action.lower())(request, experiments, tag)
    messages.success(request, done)
    return redirect(back)


class _Bulk:
    """Each bulk action returns the sentence saying what it did."""

    @staticmethod
    def _set(request, experiments, state):
        changed = 0
        with transaction.atomic():
            for e in experiments:
                changed += bool(e.set_desired_state(state, user=request.user))
        same = len(experiments) - changed
        return f"{changed} experiment{'s' if changed != 1 else ''} set to {state}" + (f"; {same} already were." if same else ".")

    @classmethod
    def running(cls, request, experiments, tag):
        return cls._set(request, experiments, DesiredState.RUNNING)

    @classmethod
    def stopped(cls, request, experiments, tag):
        return cls._set(request, experiments, DesiredState.STOPPED)

    @classmethod
    def terminated(cls, request, experiments, tag):
        return cls._set(request, experiments, DesiredState.TERMINATED)

    @staticmethod
    def clone(request, experiments, tag):
        names = []
        with transaction.atomic():
            for e in experiments:
                names.append(clone_experiment(e, request.user).name)
        return f"Cloned {len(names)} experiment{'s' if len(names) != 1 else ''} (stopped): {', '.join(names[:10])}" + (
            "…" if len(names) > 10 else "."
        )

    @staticmethod
    def _retag(experiments, change):
        changed = []
        for e in experiments:
            tags = change(list(e.tags or []))
            if tags != e.tags:
                e.tags = tags
                changed.append(e)
        Experiment.objects.bulk_update(changed, ["tags"]) if changed else None
        return len(changed)

    @classmethod
    def tag_add(cls, request, experiments, tag):
        n = cls._retag(experiments, lambda tags: tags if tag in tags else [*tags, tag])
        return f"Tagged {n} experiment{'s' if n != 1 else ''} “{tag}”" + (f"; {len(experiments) - n} already were." if n < len(experiments) else ".")

    @classmethod
    def tag_remove(cls, request, experiments, tag):
        n = cls._retag(experiments, lambda tags: [t for t in tags if t != tag])
        return f"Removed “{tag}” from {n} experiment{'s' if n != 1 else ''}."

    @staticmethod
    def star(request, experiments, tag):
        n = Experiment.objects.filter(pk__in=[e.pk for e in experiments]).update(starred=True)
        return f"Starred {n} experiment{'s' if n != 1 else ''}."

    @staticmethod
    def unstar(request, experiments, tag):
        n = Experiment.objects.filter(pk__in=[e.pk for e in experiments]).update(starred=False)
        return f"Unstarred {n} experiment{'s' if n != 1 else ''}."

    @staticmethod
    def delete(request, experiments, tag):
        doomed, busy = Experiment.objects.filter(pk__in=[e.pk for e in experiments]).delete_idle(user=request.user)
        text = f"Deleted {len(doomed)} experiment{'s' if len(doomed) != 1 else ''}."
        if busy:
            text += f" Kept {len(busy)} with a job still active ({', '.join(busy[:10])}): stop them first."
        return text


def free_name(base):
    """``base``, or ``base-2``, ``base-3``… whichever is not taken."""
    base = base[:54].rstrip("-")
    return unique_name(base, set(Experiment.objects.filter(name__startswith=base).values_list("name", flat=True)))


def clone_experiment(source, user):
    copy = Experiment(
        **{
            f.attname: getattr(source, f.attname)
            for f in Experiment._meta.concrete_fields
            if f.name in CLONED_FIELDS
        }
    )
    copy.name = free_name(f"{source.name}-copy")
    copy.desired_state = DesiredState.STOPPED
    copy.created_by = user if user.is_authenticated else None
    copy.save()
    Event.record(copy, Event.Kind.CREATED, f"Cloned from {source.name}", user=user)
    return copy


CLONED_FIELDS = {
    "description", "command", "flags", "flag_style", "accelerators", "num_nodes", "cpus", "memory", "infra",
    "use_spot", "disk_size", "image_id", "setup", "envs", "workdir", "autostop_minutes", "managed", "backend",
    "restart_policy", "max_restarts", "tags", "sweep",
}


# --- create, edit, clone ----------------------------------------------------------


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
        },
    )


def _initial_preview(form):
    command = form.initial.get("command") or form.instance.command
    flags = form.initial.get("flags") or form.instance.flags or {}
    try:
        return build_command(command, flags, form.initial.get("flag_style") or form.instance.flag_style), ""
    except ValidationError:
        return None, "Type a command to see the line that will run."


def experiment_create(request):
    if request.method == "POST":
        form = ExperimentForm(request.POST)
        if form.is_valid():
            desired = form.cleaned_data["desired_state"]
            with transaction.atomic():
                experiment = form.save(commit=False)
                experiment.desired_state = DesiredState.STOPPED
                experiment.created_by = request.user
                experiment.save()
                Event.record(experiment, Event.Kind.CREATED, "Created", user=request.user)
                if desired != DesiredState.STOPPED:
                    experiment.set_desired_state(desired, user=request.user)
            messages.success(request, f"Created {experiment.name}" + (f" and set it {desired}." if desired != "STOPPED" else "."))
            return redirect(experiment)
    else:
        form = ExperimentForm(initial={"backend": settings.SKYDECK_DEFAULT_BACKEND, "desired_state": DesiredState.STOPPED})
    return _form_page(request, form)


@require_GET
def experiment_clone(request, name):
    source = get_object_or_404(Experiment, name=name)
    initial = {f: getattr(source, f) for f in CLONED_FIELDS if f != "sweep"}
    initial.update(name=free_name(f"{source.name}-copy"), desired_state=DesiredState.STOPPED)
    form = ExperimentForm(initial=initial)
    return _form_page(request, form, clone_of=source)


def experiment_edit(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    if request.method == "POST":
        previous_desired = experiment.desired_state
        form = ExperimentForm(request.POST, instance=experiment)
        if form.is_valid():
            desired = form.cleaned_data["desired_state"]
            changed = form.changed_spec_fields()
            with transaction.atomic():
                experiment = form.save(commit=False)
                experiment.desired_state = previous_desired
                experiment.save()
                if changed:
                    Event.record(
                        experiment,
                        Event.Kind.SPEC,
                        f"Spec edited ({', '.join(sorted(set(changed)))}); generation {experiment.generation}",
                        user=request.user,
                        data={"fields": sorted(set(changed)), "generation": experiment.generation},
                    )
                if desired != previous_desired:
                    experiment.set_desired_state(desired, user=request.user)
                active = experiment.active_job
                restart = changed and active is not None and form.cleaned_data.get("restart_now")
                if restart:
                    experiment.request_restart(user=request.user)
            if restart:
                messages.success(request, f"Saved {experiment.name} and restarting it with the new spec.")
            elif changed and active is not None:
                messages.warning(
                    request,
                    f"Saved. Attempt {active.attempt} keeps running the previous spec; "
                    "the change applies when you restart.",
                )
            else:
                messages.success(request, f"Saved {experiment.name}.")
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
    schema = schemas_for([row.key]).get(row.key)
    if schema is not None and request.GET.get("adopt") != "0":
        if schema.type in {FlagSchema.Type.INTEGER, FlagSchema.Type.FLOAT, FlagSchema.Type.BOOLEAN, FlagSchema.Type.STRING}:
            row.type = schema.type
        if not row.raw and schema.default is not None:
            row.raw = ("true" if schema.default else "") if isinstance(schema.default, bool) else str(schema.default)
    describe_schema(row, schema)
    return render(request, "experiments/form.html#flag_row", {"row": row, "flag_types": FLAG_TYPES})


@require_GET
def flag_search(request):
    """Known flag paths for the typeahead."""
    q = request.GET.get("q", "").strip()
    for name, value in request.GET.items():
        if name.endswith("-key") and not q:
            q = value.strip()
    schemas = FlagSchema.objects.order_by("path", "namespace")
    if q:
        schemas = schemas.filter(path__icontains=q)
    return render(request, "experiments/form.html#flag_options", {"schemas": schemas[:20]})


@require_POST
def command_preview(request):
    return render(request, "experiments/form.html#preview", {"preview": preview_command(request.POST)})


# --- detail -----------------------------------------------------------------------


def _detail_context(request, experiment, attempt=None):
    jobs = list(experiment.jobs.all()[:JOB_HISTORY_LIMIT])
    events = list(experiment.events.select_related("user", "job").all()[:EVENT_LIMIT])
    active = next((j for j in jobs if j.status in ACTIVE_JOB_STATUSES), None)
    if attempt is None and request.GET.get("job", "").isdigit():
        attempt = int(request.GET["job"])
    selected = next((j for j in jobs if j.attempt == attempt), None) if attempt else None
    if selected is None and attempt:
        selected = experiment.jobs.filter(attempt=attempt).first()
    selected = selected or active or (jobs[0] if jobs else None)
    out_of_date = active is not None and active.generation < experiment.generation
    token = change_token(
        experiment.phase, experiment.desired_state, experiment.status_reason, experiment.status_message,
        experiment.generation, experiment.failure_count, experiment.next_attempt_at, experiment.starred,
        [(j.attempt, j.status, j.exit_code, j.started_at, j.ended_at, j.cost, j.cluster_name, j.error_message) for j in jobs],
        events[0].pk if events else None,
        selected.attempt if selected else None,
        int(time.time() // 60),
    )
    try:
        command_line = build_command(experiment.command, experiment.flags, experiment.flag_style)
    except ValidationError as exc:
        command_line = f"(cannot build the command: {'; '.join(exc.messages)})"
    return {
        "experiment": experiment,
        "jobs": jobs,
        "events": events,
        "active_job": active,
        "selected_job": selected,
        "out_of_date": out_of_date,
        "token": token,
        "wandb": wandb_url(experiment.name, experiment.flags),
        "more_jobs": len(jobs) == JOB_HISTORY_LIMIT,
        "pinned": attempt,
        "selected_attempt": str(selected.attempt) if selected else "",
        "log_attempt_shown": request.GET.get("log_attempt", ""),
        "command_line": command_line,
        "sorted_flags": sorted((experiment.flags or {}).items()),
    }


@require_GET
def experiment_detail(request, name, attempt=None):
    experiment = get_object_or_404(Experiment, name=name)
    context = _detail_context(request, experiment, attempt)
    if request.htmx and not request.htmx.history_restore_request and request.GET.get("part") == "live":
        if unchanged(request, context["token"]):
            return HttpResponse(status=204)
        return render(request, "experiments/detail.html#live", context)
    return render(request, "experiments/detail.html", context)


@require_GET
def job_detail(request, name, attempt):
    experiment = get_object_or_404(Experiment, name=name)
    get_object_or_404(Job, experiment=experiment, attempt=attempt)
    return experiment_detail(request, name, attempt)


@require_GET
def job_log(request, name, attempt):
    """The next piece of a job's log from ``offset``, appended by htmx to what is shown."""
    job = get_object_or_404(Job.objects.select_related("experiment"), experiment__name=name, attempt=attempt)
    try:
        offset = max(0, int(request.GET.get("offset", "0")))
    except ValueError:
        offset = 0
    state = request.GET.get("state", "")
    error = ""
    html = ""
    complete = False
    more = False
    try:
        chunk = get_backend(job.backend).read_log(job.cluster_name, job.sky_job_id, job.log_path, offset)
    except BackendError as exc:
        error = exc.message
    else:
        rendered = ansi_to_html(chunk.text, state)
        html = rendered.html
        state = rendered.state
        offset = chunk.offset - len(rendered.held.encode())
        complete = chunk.complete and not job.is_active
        more = len(chunk.text) >= 64 * 1024
    next_url = reverse("experiments:job_log", args=[name, attempt]) + "?" + urlencode({"offset": offset, "state": state})
    return render(
        request,
        "experiments/detail.html#log_chunk",
        {"job": job, "html": html, "complete": complete, "more": more, "next_url": next_url, "error": error},
    )


# --- single-experiment actions --------------------------------------------------


@require_POST
def experiment_set_state(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    state = request.POST.get("state", "")
    if state == DesiredState.TERMINATED and experiment.desired_state != state and not request.POST.get("confirmed"):
        return confirm(
            request,
            title=f"Terminate {experiment.name}?",
            message="Its running job is cancelled and its cluster torn down; the disk is lost. The history stays.",
            action_label="Terminate",
        )
    try:
        if experiment.set_desired_state(state, user=request.user):
            messages.success(request, f"{experiment.name}: desired state set to {state}.")
        else:
            messages.info(request, f"{experiment.name} is already set to {state}.")
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    return redirect(safe_next(request, experiment.get_absolute_url()))


@require_POST
def experiment_restart(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    experiment.request_restart(user=request.user)
    messages.success(request, f"Restarting {experiment.name} with generation {experiment.generation}.")
    return redirect(safe_next(request, experiment.get_absolute_url()))


@require_POST
def experiment_delete(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    active = experiment.active_job
    if active is not None:
        messages.error(
            request,
            f"{experiment.name} was not deleted: attempt {active.attempt} is still {active.status}. "
            "Set it STOPPED or TERMINATED first, then delete it.",
        )
        return redirect(experiment)
    if not request.POST.get("confirmed"):
        return confirm(
            request,
            title=f"Delete {experiment.name}?",
            message=f"Its {experiment.jobs.count()} job(s) and its events are deleted with it. This cannot be undone.",
            action_label="Delete",
        )
    deleted, _ = Experiment.objects.filter(pk=experiment.pk).delete_idle(user=request.user)
    if not deleted:  # a job started while the confirmation was open
        messages.error(request, f"{experiment.name} was not deleted: a job started meanwhile. Stop it first.")
        return redirect(experiment)
    messages.success(request, f"Deleted {name}.")
    return redirect("experiments:list")
