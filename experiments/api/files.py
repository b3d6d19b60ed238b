"""Files: SkyPilot task YAML in and out, and skydeck.yaml applied with a plan.

``POST /experiments/import`` makes an experiment of a task YAML, ``GET /experiments/{id}/skypilot.yaml``
and ``GET /jobs/{id}/skypilot.yaml`` give one back, ``POST /apply`` plans (``dry_run``) or applies a
skydeck.yaml as the token's user, and ``GET /export`` writes the filtered experiments as one.
"""

from typing import Annotated, Any, Literal

from django.http import HttpResponse
from ninja import Field, Query, Router, Schema, Status

from clusters.backends import BackendError

from .. import files
from ..filters import ExperimentFilter
from ..models import Experiment
from .auth import actor
from .errors import ApiError, responses
from .experiments import get_experiment
from .jobs import get_job
from .schemas import BackendName, DesiredStateName, ExperimentDetailOut, ExperimentQuery, In, Name, Text

router = Router(tags=["files"])

YAML = "application/yaml"
FileName = Annotated[Text, Field(min_length=1, max_length=200)]


def _yaml_answer(description):
    # A YAML document, which clients (and the API's fuzz test) read as the mapping it holds.
    schema = {"type": "object", "description": f"{description}, as YAML"}
    return {"responses": {200: {"description": description, "content": {YAML: {"schema": schema}}}}}


def _yaml(text, filename):
    response = HttpResponse(text, content_type=f"{YAML}; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _invalid(exc):
    """A file that cannot be used: 400, every problem with its line and field."""
    first = exc.problems[0]
    errors = [{"field": p.field or None, "message": str(p)} for p in exc.problems]
    return ApiError(400, str(first), first.field or None, errors)


class TaskImportIn(In):
    """A SkyPilot task YAML to make an experiment of."""

    yaml: Text = Field(description="The task YAML, as sky launch reads it")
    filename: FileName = Field("task.yaml", description="Its file name, for the messages and the Events")
    name: Name | None = Field(None, description="The experiment's name (default: the task's, made a valid name)")
    backend: BackendName = "skypilot"
    desired_state: DesiredStateName = "STOPPED"
    workdir: Annotated[Text, Field(min_length=1, max_length=500)] | None = Field(
        None, description="The workdir on SkyDeck's worker (replaces the task's)"
    )
    description: Text = ""


@router.post("/experiments/import", response=responses(ExperimentDetailOut, 201, 413))
def import_skypilot_task(request, payload: TaskImportIn):
    """Create an experiment from a SkyPilot task YAML. 400 names the line and field of what SkyDeck cannot take."""
    try:
        experiment = files.import_task(
            actor(request),
            payload.yaml,
            source=payload.filename,
            name=payload.name,
            backend=payload.backend,
            desired_state=payload.desired_state,
            workdir=payload.workdir,
            description=payload.description,
        )
    except files.FileInvalid as exc:
        raise _invalid(exc) from None
    return Status(201, experiment)


@router.get(
    "/experiments/{id}/skypilot.yaml",
    response=responses(None),
    openapi_extra=_yaml_answer("The task YAML that sky launch runs unchanged"),
)
def export_experiment_task(request, id: str):
    """The experiment as a SkyPilot task YAML: what SkyDeck launches for its next run."""
    experiment = get_experiment(id)
    try:
        return _yaml(files.experiment_task_yaml(experiment), f"{experiment.name}.yaml")
    except BackendError as exc:
        raise ApiError(400, f"{experiment.name} cannot be written as a SkyPilot task: {exc}") from None


@router.get(
    "/jobs/{id}/skypilot.yaml",
    response=responses(None),
    openapi_extra=_yaml_answer("The task YAML of what the job ran"),
)
def export_job_task(request, id: str):
    """What one job ran (its command line and resources) as a SkyPilot task YAML."""
    job = get_job(id)
    try:
        return _yaml(files.job_task_yaml(job), f"{job.name}.yaml")
    except BackendError as exc:
        raise ApiError(400, f"{job.name} cannot be written as a SkyPilot task: {exc}") from None


class ApplyIn(In):
    """A skydeck.yaml to plan, or to apply."""

    file: Text = Field(description="The skydeck.yaml (tasks written inline: the server reads no other file)")
    filename: FileName = Field("skydeck.yaml", description="Its name, for the messages and the Events")
    dry_run: bool = Field(False, description="Only plan: change nothing")
    prune: bool = Field(False, description="Also delete your experiments the file does not name")
    restart: bool = Field(False, description="Restart experiments whose spec changes while a job runs")


class ChangeOut(Schema):
    field: str
    old: Any
    new: Any


class PlanRowOut(Schema):
    kind: Literal["experiment", "sweep"]
    name: str
    action: Literal[files.ACTIONS]
    changes: list[ChangeOut]
    desired_state: dict[str, str] | None = Field(description='{"from": …, "to": …} when it changes')
    message: str
    line: int | None
    refusal: Literal["permission", "conflict"] | None


class ApplyOut(Schema):
    dry_run: bool
    applied: bool = Field(description="Whether anything was changed")
    message: str
    summary: dict[str, int] = Field(description="Rows by action")
    plan: list[PlanRowOut]


@router.post("/apply", response=responses(ApplyOut, 200, 413))
def apply_file(request, payload: ApplyIn):
    """Plan a skydeck.yaml and, unless ``dry_run``, apply it as you: all of it, or nothing.

    The plan marks what you may not change as refused (403 when applying); an experiment with an
    active job is never pruned (409). A malformed file is a 400 naming the line and field.
    """
    who = actor(request)
    try:
        plan = files.plan(files.read_file(payload.file, source=payload.filename), who, prune=payload.prune)
    except files.FileInvalid as exc:
        raise _invalid(exc) from None
    answer = {"dry_run": payload.dry_run, "summary": plan.summary, "plan": [r.as_dict() for r in plan.rows]}
    if payload.dry_run:
        return {**answer, "applied": False, "message": f"Dry run: {plan.summary_text()}"}
    if plan.refused:
        status = 403 if any(r.refusal == "permission" for r in plan.refused) else 409
        errors = [{"field": r.name, "message": f"{r.name}: {r.message}"} for r in plan.refused]
        raise ApiError(status, str(files.Refused(plan)), errors[0]["field"], errors)
    if not plan.changes:
        return {**answer, "applied": False, "message": "Nothing to change."}
    try:
        files.apply(plan, who, restart=payload.restart)
    except files.ApplyFailed as exc:
        raise ApiError(409, str(exc)) from None
    return {**answer, "applied": True, "message": f"Applied: {plan.summary_text()}"}


@router.get("/export", response=responses(None), openapi_extra=_yaml_answer("A skydeck.yaml"))
def export_file(request, filters: Query[ExperimentQuery]):
    """The experiments the filters keep (the list's filters) as a skydeck.yaml; whole sweeps as sweeps."""
    found = ExperimentFilter(
        filters.filter_data(), queryset=Experiment.objects.select_related("sweep"), request=request
    )
    if not found.is_valid():
        field, messages = next(iter(found.errors.items()))
        raise ApiError(422, f"{field}: {messages[0]}", field)
    return _yaml(files.export_file(list(found.qs)), "skydeck.yaml")
