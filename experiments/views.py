"""The experiments list with its bulk actions, an experiment's page, and its buttons.

Every change goes through ``experiments.intent``; these views fetch, call it
and render. Polled fragments answer 204 when their change token says nothing
changed (``skydeck_site.htmx``).
"""

import functools
import json
import os
from dataclasses import dataclass
from urllib.parse import quote

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef, Subquery, Sum
from django.http import QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from clusters.backends import get_backend
from clusters.backends.base import infra_cannot_stop
from clusters.models import Cluster
from skydeck_site.fragments import draw_each
from skydeck_site.htmx import change_token, confirm, live_token, page_or_fragment, safe_next

from . import file_views, intent, logs, revision
from .filters import ExperimentFilter
from .launch import build_command
from .metric_models import MetricSeries
from .models import ACTIVE_JOB_STATUSES, FAILED_JOB_STATUSES, DesiredState, Experiment, Job, JobStatus, Subscription
from .templatetags.dashboard import finished_run, status_class, wandb_url
from .validators import FLAG_KEY_MAX, FLAG_KEY_RE, TAG_HELP, TAG_RE

MAX_FLAG_COLUMNS = 8
MAX_CHOSEN_FLAG_COLUMNS = 30
FLAG_COLUMNS_KEY = "experiment_list_flag_columns"
PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
JOB_HISTORY_LIMIT = 100
EVENT_LIMIT = 100
BULK_ACTIONS = {
    "RUNNING": "Run (finished ones run again)",
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


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- running: a finished run starts afresh ---------------------------------------------


@dataclass
class Started:
    """What "Run" did to each experiment asked."""

    again: list  # their run had finished: a new run started (a restart)
    set_running: list  # their desired state became RUNNING
    already: list  # RUNNING already, with a run still going

    def sentence(self):
        parts = []
        if self.again:
            parts.append(
                f"Started {plural(len(self.again), 'finished experiment')} again (a new run each: "
                + ", ".join(f"{e.name} run {e.run_number}" for e in self.again[:5])
                + ("…" if len(self.again) > 5 else "")
                + ")"
            )
        if self.set_running:
            parts.append(f"{plural(len(self.set_running), 'experiment')} set to RUNNING")
        if self.already:
            parts.append(f"{len(self.already)} already {'was' if len(self.already) == 1 else 'were'} RUNNING")
        return "; ".join(parts) + "."


def start_runs(actor, experiments):
    """Run each: one whose run has finished (Succeeded or Failed, nothing active) starts a new run;
    the others are set RUNNING, which starts a run only where none was asked for.

    ``intent.set_desired_state`` leaves an experiment that is already RUNNING as it is, so
    a finished one would never run again from a "Run" button; ``intent.restart`` does that.
    """
    experiments = list(experiments)
    refused = [e.name for e in experiments if not actor.may_change(e)]
    if refused:
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise PermissionDenied(
            f"You may not change {', '.join(refused[:10])}{more}: only the owner, its group and staff may."
        )
    busy = set(
        Job.objects.active().filter(experiment__in=[e.pk for e in experiments]).values_list("experiment_id", flat=True)
    )
    finished = [e for e in experiments if finished_run(e) and e.pk not in busy]
    restarting = {e.pk for e in finished}
    others = [e for e in experiments if e.pk not in restarting]
    was_running = {e.pk for e in others if e.desired_state == DesiredState.RUNNING}
    if finished:
        intent.restart_many(actor, finished)
    if others:
        intent.set_desired_state_many(actor, others, DesiredState.RUNNING)
    return Started(
        again=finished,
        set_running=[e for e in others if e.pk not in was_running],
        already=[e for e in others if e.pk in was_running],
    )


# --- the list -----------------------------------------------------------------


def spent_subquery():
    """What an experiment's jobs have cost, as a subquery (not a join: other joins cannot multiply the sum)."""
    return Subquery(
        Job.objects.filter(experiment=OuterRef("pk"))
        .order_by()
        .values("experiment")
        .annotate(t=Sum("cost"))
        .values("t")
    )


def list_queryset():
    """Experiments with the id of their last job and what their jobs have cost (in the one query of the page)."""
    last = Job.objects.filter(experiment=OuterRef("pk")).order_by("-attempt").values("pk")[:1]
    return Experiment.objects.defer("setup", "envs", "status_message", "image_id", "workdir").annotate(
        last_job_id=Subquery(last), spent_total=spent_subquery()
    )


def _flags(e):
    return e.flags if isinstance(e.flags, dict) else {}


def differing_flags(experiments):
    """Flag paths whose value is not the same on every row shown."""
    keys = sorted({k for e in experiments for k in _flags(e)})
    differ = []
    for key in keys:
        values = {json.dumps(_flags(e).get(key), sort_keys=True) if key in _flags(e) else "∅" for e in experiments}
        if len(values) > 1:
            differ.append(key)
    return differ


@dataclass
class FlagColumns:
    """Which flag columns the table shows: the user's choice (remembered in the session), or those that differ."""

    shown: list
    offered: list  # what the chooser lists: every flag on the page, and those chosen
    checked: list  # what the chooser has ticked
    chosen: bool
    more: int  # differing flags the automatic choice leaves out


def flag_columns(request, experiments):
    present = sorted({k for e in experiments for k in _flags(e)})
    chosen = request.session.get(FLAG_COLUMNS_KEY)
    if isinstance(chosen, list):
        on_page = set(present)
        shown = [p for p in chosen if p in on_page]
        return FlagColumns(shown, sorted(on_page | set(chosen)), chosen, True, 0)
    # A flag set on a single row of many is not worth a column of dashes.
    counts = {k: sum(1 for e in experiments if k in _flags(e)) for k in present}
    differ = [k for k in differing_flags(experiments) if counts[k] > 1 or len(experiments) < 3]
    shown = differ[:MAX_FLAG_COLUMNS]
    return FlagColumns(shown, present, shown, False, max(0, len(differ) - MAX_FLAG_COLUMNS))


def _truncate(text, length):
    return text if len(text) <= length else text[: length - 1] + "…"


def _flag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Row:
    """One row of the experiments table, everything computed, so the template only lays it out."""

    experiment: Experiment
    url: str
    selected: bool
    tags: list  # (tag, link)
    description: str
    out_of_date: bool
    resources: str
    flags: list  # (shown, full) or None per flag column
    job: Job | None
    job_url: str
    wandb: str
    metric: float | None = None  # the chosen metric column's value
    spend: str = ""  # "$3.20 of $10" where a budget is set
    over_budget: bool = False
    html: str = ""  # the row drawn (render_rows)

    @property
    def phase_class(self):
        return status_class(self.experiment.phase)

    @property
    def job_class(self):
        return status_class(self.job.status) if self.job else ""


def _resources(e):
    if e.backend == "local":
        return "this machine"  # the local backend uses none of the resource fields
    text = e.accelerators or "CPU"
    if e.num_nodes > 1:
        text += f" × {e.num_nodes} nodes"
    if e.use_spot:
        text += " · spot"
    if e.infra:
        text += f" · {e.infra}"
    return text


def dollars(amount):
    """$10 for a round amount, $3.20 otherwise."""
    return f"${amount:,.0f}" if float(amount).is_integer() else f"${amount:,.2f}"


def spend_of(spent, budget):
    """What has been spent against a budget, in words ("$3.20 of $10"), and whether it is all spent."""
    if budget is None:
        return "", False
    spent = spent or 0.0
    return f"${spent:,.2f} of {dollars(budget)}", spent >= budget


def build_rows(experiments, jobs, flag_columns, selected):
    list_url = reverse("experiments:list")
    # One reverse for the page, not one per row (names are URL-safe slugs; quote() keeps them so).
    detail_url = reverse("experiments:detail", args=["_name_"])  # (no experiment name has "_")
    rows = []
    for e in experiments:
        url = detail_url.replace("/_name_/", f"/{quote(e.name, safe='')}/", 1)
        job = jobs.get(e.last_job_id)
        flags = e.flags if isinstance(e.flags, dict) else {}
        cells = []
        for path in flag_columns:
            if path in flags:
                full = _flag_text(flags[path])
                cells.append((_truncate(full, 40), full))
            else:
                cells.append(None)
        rows.append(
            Row(
                experiment=e,
                url=url,
                selected=str(e.pk) in selected,
                tags=[(t, f"{list_url}?tag={quote(t, safe='')}") for t in e.tags or []],
                description=_truncate(e.description, 80),
                out_of_date=job is not None and job.status in ACTIVE_JOB_STATUSES and job.generation < e.generation,
                resources=_resources(e),
                flags=cells,
                job=job,
                job_url=f"{url}jobs/{job.attempt}/" if job else "",
                wandb=wandb_url(e.name, e.flags),
                metric=getattr(e, "metric_value", None),
            )
        )
        rows[-1].spend, rows[-1].over_budget = spend_of(getattr(e, "spent_total", None), e.max_cost)
    return rows


# What a row shows is a function of these: the experiment's columns a page shows (the change
# marker's list, less those the list does not load), its last job's and the row's own values.
ROW_EXPERIMENT_FIELDS = ("id", "created_at", *revision.TRACKED["experiments_experiment"])
ROW_JOB_FIELDS = ("id", "attempt", "status", "started_at", "ended_at", "generation")
ROW_TEMPLATES = ("experiments/list.html", "experiments/state.html", "experiments/metrics.html")


def _row_facts(row, show_metric):
    e, job = row.experiment, row.job
    deferred = e.get_deferred_fields()
    return (
        [getattr(e, f) for f in ROW_EXPERIMENT_FIELDS if f not in deferred],
        [getattr(job, f) for f in ROW_JOB_FIELDS] if job else None,
        row.selected, row.flags, row.wandb, row.spend, row.over_budget,
        row.metric if show_metric else None, show_metric,
    )  # fmt: skip


def render_rows(request, rows, show_metric):
    """Each row's HTML, drawn once and kept while nothing it shows changes (``skydeck_site.fragments``)."""
    draw_each(
        request,
        "experiments/list.html#row",
        rows,
        lambda row: _row_facts(row, show_metric),
        lambda row: {"row": row, "metric": show_metric},
        templates=ROW_TEMPLATES,
        into="html",
    )
    return rows


def page_size(request):
    raw = request.GET.get("per_page", "")
    return int(raw) if raw.isdigit() and int(raw) in PAGE_SIZES else DEFAULT_PAGE_SIZE


def list_filters(request, data=None):
    """The list's filters; "Mine" is the default for a user who owns any experiment."""
    data = (request.GET if data is None else data).copy()
    if "who" not in data:
        owns = request.user.is_authenticated and Experiment.objects.owned_by(request.user).exists()
        data["who"] = "mine" if owns else "all"
    return ExperimentFilter(data, queryset=list_queryset(), request=request)


def _list_context(request, token=None):
    """The list page's context; ``token``: its live token when there is one (else one is made of what it shows)."""
    filters = list_filters(request)
    paginator = Paginator(filters.qs, page_size(request))
    page = paginator.get_page(request.GET.get("page"))
    experiments = list(page.object_list)
    jobs = {
        j.pk: j
        for j in Job.objects.filter(pk__in=[e.last_job_id for e in experiments if e.last_job_id]).only(
            "attempt", "status", "started_at", "ended_at", "generation"
        )
    }
    columns = flag_columns(request, experiments)
    query = list_query(request)
    selected = set(request.GET.getlist("selected"))
    token = token or change_token(
        query.urlencode(),
        page.number,
        paginator.count,
        [
            (e.pk, e.name, e.description, e.phase, e.desired_state, e.status_reason, e.starred, e.tags, e.flags,
             e.backend, e.accelerators, e.num_nodes, e.infra, e.use_spot, e.generation)
            for e in experiments
        ],
        sorted((j.pk, j.status, j.started_at, j.ended_at, j.generation) for j in jobs.values()),
        # No clock here: ages and durations count on in the browser (<time data-relative>).
        sorted(selected),
        columns.shown,
        columns.offered,
        [getattr(e, "metric_value", None) for e in experiments],
        [(getattr(e, "spent_total", None), e.max_cost) for e in experiments],
    )  # fmt: skip
    metric = filters.form.cleaned_data.get("metric") if filters.is_bound and filters.is_valid() else ""
    rows = render_rows(request, build_rows(experiments, jobs, columns.shown, selected), metric)
    sort_query = {}
    for sort in ("metric", "-metric"):
        by = query.copy()
        by["sort"] = sort
        sort_query[sort] = by.urlencode()
    return {
        "filters": filters,
        "page": page,
        "paginator": paginator,
        "rows": rows,
        "flag_columns": columns.shown,
        "columns": columns,
        "query": query.urlencode(),
        "page_sizes": PAGE_SIZES,
        "per_page": paginator.per_page,
        "token": token,
        "bulk_actions": BULK_ACTIONS,
        "filtered": filters.active_count > 0,
        "metric": metric,
        "metric_sort": sort_query,
        "metric_names": lazy_metric_names,
    }


def lazy_metric_names():
    """The metric names the list's metric column offers (the full page only asks)."""
    return MetricSeries.objects.order_by("name").values_list("name", flat=True).distinct()[:100]


def list_query(request):
    """The list's parameters that say which rows it shows (not the token, the selection or the page)."""
    query = request.GET.copy()
    for key in ("token", "selected", "page"):
        query.pop(key, None)
    return query


def list_token(request):
    """The list's live token, O(1); None while a metric column is shown (metrics are not in the change marker)."""
    if request.GET.get("metric"):
        return None
    query = list_query(request)
    return live_token(
        request,
        "list",
        query.urlencode(),
        request.GET.get("page", ""),
        sorted(set(request.GET.getlist("selected"))),
        request.session.get(FLAG_COLUMNS_KEY),
    )


@require_GET
def experiment_list(request):
    token = list_token(request)
    if token is None:
        context = _list_context(request)
        return page_or_fragment(request, "experiments/list.html", "table", context, token=context["token"])
    return page_or_fragment(
        request, "experiments/list.html", "table", lambda: _list_context(request, token), token=token
    )


@require_POST
def experiment_columns(request):
    """Choose the list's flag columns (remembered for this login), or go back to those that differ."""
    if request.POST.get("automatic"):
        request.session.pop(FLAG_COLUMNS_KEY, None)
    else:
        paths = [p for p in request.POST.getlist("column") if FLAG_KEY_RE.fullmatch(p) and len(p) <= FLAG_KEY_MAX]
        request.session[FLAG_COLUMNS_KEY] = list(dict.fromkeys(paths))[:MAX_CHOSEN_FLAG_COLUMNS]
    return redirect(safe_next(request, reverse("experiments:list")))


@require_POST
def experiment_star(request, name):
    experiment = get_object_or_404(Experiment.objects.only("pk", "name", "starred"), name=name)
    wanted = request.POST.get("starred", "toggle")
    starred = (not experiment.starred) if wanted == "toggle" else wanted in {"1", "true", "on"}
    intent.star(intent.Actor.of(request), [experiment], starred)
    experiment.starred = starred
    if request.htmx:
        return page_or_fragment(request, "experiments/list.html", "star", {"e": experiment})
    return redirect(safe_next(request, reverse("experiments:list")))


class BulkAction:
    """Each bulk action returns the sentence saying what it did."""

    def __init__(self, request, experiments, tag):
        self.actor = intent.Actor.of(request)
        self.experiments = experiments
        self.tag = tag

    def _set(self, state):
        changed = intent.set_desired_state_many(self.actor, self.experiments, state)
        same = len(self.experiments) - changed
        return f"{plural(changed, 'experiment')} set to {state}" + (f"; {same} already were." if same else ".")

    def running(self):
        return start_runs(self.actor, self.experiments).sentence()

    def stopped(self):
        return self._set(DesiredState.STOPPED)

    def terminated(self):
        return self._set(DesiredState.TERMINATED)

    def clone(self):
        names = [intent.clone(self.actor, e).name for e in self.experiments]
        return f"Cloned {plural(len(names), 'experiment')} (stopped): {', '.join(names[:10])}" + (
            "…" if len(names) > 10 else "."
        )

    def tag_add(self):
        n = intent.retag(self.actor, self.experiments, add=[self.tag])
        already = len(self.experiments) - n
        return f"Tagged {plural(n, 'experiment')} “{self.tag}”" + (f"; {already} already were." if already else ".")

    def tag_remove(self):
        n = intent.retag(self.actor, self.experiments, remove=[self.tag])
        return f"Removed “{self.tag}” from {plural(n, 'experiment')}."

    def star(self):
        return f"Starred {plural(intent.star(self.actor, self.experiments, True), 'experiment')}."

    def unstar(self):
        return f"Unstarred {plural(intent.star(self.actor, self.experiments, False), 'experiment')}."

    def delete(self):
        doomed, busy = intent.delete(self.actor, self.experiments)
        text = f"Deleted {plural(len(doomed), 'experiment')}."
        if busy:
            text += f" Kept {len(busy)} with a job still active ({', '.join(busy[:10])}): stop them first."
        return text


@require_POST
def experiment_bulk(request):
    action = request.POST.get("action", "")
    query = request.POST.get("query", "")
    back = reverse("experiments:list") + (f"?{query}" if query else "")
    if action not in BULK_ACTIONS:
        messages.error(request, "Choose an action to apply.")
        return redirect(back)
    if request.POST.get("all_matching"):
        queryset = list_filters(request, QueryDict(query)).qs
    else:
        ids = [i for i in request.POST.getlist("selected") if i.isdigit()]
        queryset = Experiment.objects.filter(pk__in=ids).order_by("name")
    experiments = list(queryset)
    if not experiments:
        messages.error(request, "No experiments selected: tick some rows, or “all matching”.")
        return redirect(back)
    tag = request.POST.get("tag", "").strip()
    if action in {"tag_add", "tag_remove"} and not TAG_RE.fullmatch(tag):
        messages.error(request, f"Give a tag: {TAG_HELP}.")
        return redirect(back)
    # A change to everything matching a filter shows what each will do, first.
    planned = action in file_views.PLANNED_STATES and request.POST.get("all_matching")
    if planned and not request.POST.get("confirmed"):
        # What each will do as things are (launch, stop, tear down, nothing, refused), before it happens.
        return file_views.render_bulk_plan(request, experiments, action, back=back)
    if action in DESTRUCTIVE and not request.POST.get("confirmed"):
        verb = "Delete" if action == "delete" else "Terminate"
        detail = (
            "Their job history and events are deleted too. Experiments with a job still running are skipped."
            if action == "delete"
            else _terminate_says(experiments)
        )
        return confirm(
            request,
            title=f"{verb} {plural(len(experiments), 'experiment')}?",
            message=detail,
            items=[e.name for e in experiments],
            action_label=f"{verb} {len(experiments)}",
            cancel_url=back,
        )
    try:
        done = getattr(BulkAction(request, experiments, tag), action.lower())()
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect(back)


def _terminate_says(experiments):
    """What terminating these does, as it is now: which jobs are cancelled, which clusters torn down."""
    ids = [e.pk for e in experiments]
    running = list(Job.objects.active().filter(experiment__in=ids).order_by("experiment__name"))
    clusters = Cluster.objects.filter(name__in=[e.cluster_name for e in experiments]).count()
    parts = []
    if len(experiments) == 1:
        e = experiments[0]
        if running:
            parts.append(f"Attempt {running[0].attempt} is cancelled.")
        parts.append(
            f"Cluster {e.cluster_name} is torn down: its disk is lost."
            if clusters
            else "It has no cluster to tear down."
        )
    else:
        jobs = f"{plural(len(running), 'running job')} {'is' if len(running) == 1 else 'are'} cancelled"
        torn = f"{plural(clusters, 'cluster')} {'is' if clusters == 1 else 'are'} torn down (disks are lost)"
        if running and clusters:
            parts.append(f"{jobs} and {torn}.")
        elif running or clusters:
            parts.append(f"{jobs}." if running else f"No job is running; {torn}.")
        else:
            parts.append("None has a job running or a cluster to tear down.")
    return " ".join(parts) + " The job history stays."


# --- detail -----------------------------------------------------------------------

# A failed job's summary: its error message, else this many last lines of its output.
SUMMARY_LINES = 6
# The output of only the latest few failed jobs is read for a summary (a file each).
SUMMARIES_READ = 3


def output_tail(job, lines=SUMMARY_LINES):
    """The last lines of a job's output copy, as plain text (colours and progress-bar redraws removed)."""
    return logs.plain_tail(job.log_path, lines=lines)


def error_summary(job):
    """What a failed job says went wrong: its error message, else the end of its output
    (a Python traceback's last line names the exception)."""
    if job.error_message:
        return job.error_message
    if job.status in FAILED_JOB_STATUSES and job.log_path:
        return output_tail(job)
    return ""


def _attach_summaries(jobs):
    """``job.summary`` for the jobs table: read from the output copy only when drawn, and only for the latest few."""
    read = 0
    for job in jobs:
        if job.error_message or job.status not in FAILED_JOB_STATUSES or read >= SUMMARIES_READ:
            job.summary = job.error_message
        else:
            job.summary = functools.cache(functools.partial(error_summary, job))
            read += 1


@dataclass
class Guardrails:
    """What the status card says of the experiment's guardrails, as things are."""

    spent: float
    spend: str  # "$3.20 of $10", or "" with no budget
    over_budget: bool
    run_started_at: object  # when the current run's first job started, while a job of it is active
    runtime_limit: str  # "2 h", or ""
    output: logs.Output | None  # when the active job last printed (None: no job running)
    stall_minutes: int | None  # the watchdog's threshold in force (None: off)


def _minutes_text(minutes):
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{rest} min"
    return f"{hours} h" + (f" {rest:02d} min" if rest else "")


def guardrails_of(experiment, jobs, active):
    spent = getattr(experiment, "spent_total", None)
    spent = experiment.spent() if spent is None and not hasattr(experiment, "spent_total") else (spent or 0.0)
    spend, over = spend_of(spent, experiment.max_cost)
    run = [j.started_at for j in jobs if j.run_number == experiment.run_number and j.started_at is not None]
    output = None
    if active is not None and active.status == JobStatus.RUNNING and active.log_path:
        output = logs.last_output(active, copied=hasattr(get_backend(active.backend), "sync_log"))
        if active.started_at and output.at is not None and output.at < active.started_at:
            output = logs.Output(active.started_at, output.checked_at)  # an older copy: silence counts from the start
    return Guardrails(
        spent=spent,
        spend=spend,
        over_budget=over,
        run_started_at=min(run) if run and active is not None else None,
        runtime_limit=_minutes_text(experiment.max_runtime_minutes) if experiment.max_runtime_minutes else "",
        output=output,
        stall_minutes=experiment.stall_threshold,
    )


DETAIL_TEMPLATES = ("experiments/detail.html", "experiments/state.html")
JOB_FACTS = ("id", "created_at", *revision.TRACKED["experiments_job"])


def _summary_facts(job):
    """What a job's summary depends on: its error message, or the output copy it is read from."""
    if isinstance(job.summary, str):
        return job.summary
    try:
        stat = os.stat(job.log_path)
    except OSError:
        return None
    return job.log_path, stat.st_mtime_ns, stat.st_size


def draw_history(request, experiment, jobs, events, selected):
    """The jobs table's and the timeline's rows (``job.row_html``, ``ev.row_html``), kept while unchanged."""
    common = {"experiment": experiment, "selected_job": selected}
    draw_each(
        request,
        "experiments/detail.html#job_row",
        jobs,
        lambda j: (
            experiment.name, experiment.generation, [getattr(j, f) for f in JOB_FACTS], j == selected,
            _summary_facts(j),
        ),
        lambda j: {**common, "job": j},
        templates=DETAIL_TEMPLATES,
        into="row_html",
    )  # fmt: skip
    draw_each(
        request,
        "experiments/detail.html#event_row",
        events,
        lambda e: (experiment.name, e.pk, e.kind, e.message, e.created_at, e.who, e.job.attempt if e.job else None),
        lambda e: {**common, "ev": e},
        templates=DETAIL_TEMPLATES,
        into="row_html",
    )


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
    last_job = jobs[0] if jobs else None
    _attach_summaries(jobs)
    draw_history(request, experiment, jobs, events, selected)
    failed_last = last_job is not None and active is None and last_job.status in FAILED_JOB_STATUSES
    guardrails = guardrails_of(experiment, jobs, active)
    try:
        command_line = build_command(experiment.command, experiment.flags, experiment.flag_style)
    except ValidationError as exc:
        command_line = f"(cannot build the command: {'; '.join(exc.messages)})"
    return {
        "experiment": experiment,
        "jobs": jobs,
        "events": events,
        "active_job": active,
        "last_job": last_job,
        # Drawn only when the fragment is (a poll answered 204 reads no file).
        "failure_summary": last_job.summary if failed_last else "",
        "guardrails": guardrails,
        "selected_job": selected,
        "out_of_date": out_of_date,
        "finished": active is None and finished_run(experiment),
        "may_change": intent.Actor.of(request).may_change(experiment),
        "wandb": wandb_url(experiment.name, experiment.flags),
        "more_jobs": len(jobs) == JOB_HISTORY_LIMIT,
        "pinned": attempt,
        "selected_attempt": str(selected.attempt) if selected else "",
        "log_attempt_shown": request.GET.get("log_attempt", ""),
        "command_line": command_line,
        "sorted_flags": sorted((experiment.flags or {}).items()),
        "idle_verb": "torn down"
        if experiment.backend == "skypilot" and infra_cannot_stop(experiment.infra)
        else "stopped",
    }


@require_GET
def experiment_detail(request, name, attempt=None):
    # Its spend and whether the user is told about it come with the row (no query of their own).
    subscribed = Exists(Subscription.objects.filter(user=request.user, experiment=OuterRef("pk")))

    def experiment():
        return get_object_or_404(
            Experiment.objects.select_related("sweep", "created_by", "owner", "group", "metric_pattern").annotate(
                spent_total=spent_subquery(), subscribed=subscribed
            ),
            name=name,
        )

    token = detail_token(request, name, attempt)
    if request.GET.get("part") == "live":
        return page_or_fragment(
            request,
            "experiments/detail.html",
            "live",
            lambda: {**_detail_context(request, experiment(), attempt), "token": token},
            token=token,
        )
    found = experiment()
    context = {**_detail_context(request, found, attempt), "token": token, "subscribed": found.subscribed}
    return render(request, "experiments/detail.html", context)


def detail_token(request, name, attempt):
    """The live part's token in O(1): the change marker, the request's own parts, when the running job last printed.

    The output's time is a file's, which the change marker does not see; it is what
    "last output 14 min ago" and the stall watchdog's line read.
    """
    running = (
        Job.objects.filter(experiment__name=name, status=JobStatus.RUNNING)
        .only("pk", "log_path", "backend", "status", "started_at")
        .first()
    )
    printed = logs.last_output(running).at if running is not None and running.log_path else None
    return live_token(
        request,
        "detail",
        name,
        attempt,
        request.GET.get("job", ""),
        request.GET.get("log_attempt", ""),
        printed,
    )


@require_GET
def job_detail(request, name, attempt):
    get_object_or_404(Job, experiment__name=name, attempt=attempt)
    return experiment_detail(request, name, attempt)


# --- single-experiment actions --------------------------------------------------


def _act(request, experiment, change, success):
    """Run one intent change, turning a refusal into a message."""
    try:
        result = change()
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        messages.error(request, "; ".join(exc.messages))
    else:
        kind, text = success(result)
        getattr(messages, kind)(request, text)
    return redirect(safe_next(request, experiment.get_absolute_url()))


@require_POST
def experiment_set_state(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    state = request.POST.get("state", "")
    if state == DesiredState.TERMINATED and experiment.desired_state != state and not request.POST.get("confirmed"):
        return confirm(
            request,
            title=f"Terminate {experiment.name}?",
            message=_terminate_says([experiment]),
            action_label="Terminate",
            cancel_url=safe_next(request, experiment.get_absolute_url()),
        )
    if state == DesiredState.RUNNING:
        return _act(request, experiment, lambda: start_runs(intent.Actor.of(request), [experiment]), _run_said)
    return _act(
        request,
        experiment,
        lambda: intent.set_desired_state(intent.Actor.of(request), experiment, state),
        lambda changed: (
            ("success", f"{experiment.name}: desired state set to {state}.")
            if changed
            else ("info", f"{experiment.name} is already set to {state}.")
        ),
    )


def _run_said(started):
    if started.again:
        e = started.again[0]
        return "success", f"{e.name}: run {e.run_number - 1} had finished; run {e.run_number} starts now."
    if started.set_running:
        return "success", f"{started.set_running[0].name}: desired state set to RUNNING."
    e = started.already[0]
    return "info", f"{e.name} is already RUNNING ({e.get_phase_display().lower()}, run {e.run_number})."


@require_POST
def experiment_restart(request, name):
    experiment = get_object_or_404(Experiment, name=name)
    return _act(
        request,
        experiment,
        lambda: intent.restart(intent.Actor.of(request), experiment),
        lambda _: (
            "success",
            f"Restarting {experiment.name}: run {experiment.run_number}, generation {experiment.generation}.",
        ),
    )


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
        jobs = experiment.jobs.count()
        return confirm(
            request,
            title=f"Delete {experiment.name}?",
            message=(f"Its {plural(jobs, 'job')} and its events are deleted with it." if jobs else "It has no jobs.")
            + " This cannot be undone.",
            action_label="Delete",
            cancel_url=experiment.get_absolute_url(),
        )
    try:
        deleted, _ = intent.delete(intent.Actor.of(request), [experiment])
    except PermissionDenied as exc:
        messages.error(request, str(exc))
        return redirect(experiment)
    if not deleted:  # a job started while the confirmation was open
        messages.error(request, f"{experiment.name} was not deleted: a job started meanwhile. Stop it first.")
        return redirect(experiment)
    messages.success(request, f"Deleted {name}.")
    return redirect("experiments:list")
