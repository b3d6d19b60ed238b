"""The REST API (django-ninja), under /api/.

Paths follow the prototype's, so scripts written for it carry over. Every
endpoint needs a user: a bearer token (``Authorization: Bearer <token>``) or
the dashboard's session cookie with its CSRF token. Errors are JSON with a
``message`` and, for validation, the ``field``; bad input is never a 500.
"""

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone
from ninja import Field, NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf
from pydantic import AfterValidator, ConfigDict, model_validator

from clusters.models import BackendHealth, Cluster, Heartbeat

from . import flags as flag_schemas
from . import sweeps
from .launch import FLAG_KEY_RE
from .models import (
    NAME_RE,
    ApiToken,
    DesiredState,
    Event,
    Experiment,
    FlagSchema,
    Job,
    JobStatus,
    Sweep,
)

logger = logging.getLogger(__name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
MAX_ID_DIGITS = 18  # a larger number is no row's id, and would overflow the column


# --- authentication --------------------------------------------------------------------


def _single_query_values(request, user):
    """Every query parameter here is a single value: a repeated one is refused, not silently cut."""
    if user is not None:
        for key in request.GET:
            if len(request.GET.getlist(key)) > 1:
                raise ApiError(422, f"{key}: given more than once; send it once.", key)
    return user


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>``; tokens come from ``manage.py create_api_token`` or the account page."""

    def authenticate(self, request, token):
        token = token.strip()
        if not token or not _storable_text(token):
            return None
        return _single_query_values(request, ApiToken.authenticate(token))


class SessionWithCsrf(APIKeyCookie):
    """The dashboard's session cookie; a request that changes something must carry the CSRF token."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request):
        # CSRF is checked below, only for a logged-in user: without a session the answer is 401, not 403.
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request, key):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request):
            raise ApiError(403, "CSRF check failed: send the X-CSRFToken header with a session cookie, or use a bearer token.")
        return _single_query_values(request, user)


api = NinjaAPI(
    title="SkyDeck API",
    version="1",
    description=(
        "Declarative SkyPilot experiments. Authenticate with `Authorization: Bearer <token>` "
        "(create one with `manage.py create_api_token USERNAME` or on your account's token page)."
    ),
    urls_namespace="api",
    auth=[BearerToken(), SessionWithCsrf()],
    openapi_url="/openapi.json",
    docs_url="/docs",
)


# --- errors ------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status, message, field=None, errors=None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.errors = errors or ([{"field": field, "message": message}] if field else [])


class FieldErrorOut(Schema):
    field: str | None = None
    message: str


class ErrorOut(Schema):
    message: str
    detail: str = Field(description="The same as message, for clients of the prototype")
    field: str | None = None
    errors: list[FieldErrorOut] = []


def _error(request, status, message, field=None, errors=None):
    body = {"message": message, "detail": message, "field": field, "errors": errors or []}
    response = api.create_response(request, body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="skydeck"'
    return response


@api.exception_handler(ApiError)
def _api_error(request, exc):
    return _error(request, exc.status, exc.message, exc.field, exc.errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return _error(request, 401, "Authentication required: send Authorization: Bearer <token>.")


@api.exception_handler(HttpError)
def _http_error(request, exc):
    return _error(request, exc.status_code, str(exc))


@api.exception_handler(Http404)
def _not_found(request, exc):
    return _error(request, 404, str(exc) or "Not found.")


def _loc_field(loc):
    parts = [str(p) for p in loc]
    # ninja prefixes the location (body/query/path) and the parameter's name.
    if parts and parts[0] in {"body", "query", "path", "header", "cookie", "form"}:
        parts = parts[1:]
        if parts and parts[0] in {"payload", "params", "data"}:
            parts = parts[1:]
    return ".".join(parts) or None


@api.exception_handler(NinjaValidationError)
def _invalid_request(request, exc):
    errors = [{"field": _loc_field(e.get("loc", ())), "message": str(e.get("msg", "is not valid"))} for e in exc.errors]
    first = errors[0] if errors else {"field": None, "message": "The request is not valid."}
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return _error(request, 422, message, first["field"], errors)


@api.exception_handler(DjangoValidationError)
def _refused(request, exc):
    if hasattr(exc, "error_dict"):
        errors = [
            {"field": None if key == "__all__" else key, "message": message}
            for key, messages in exc.message_dict.items()
            for message in messages
        ]
    else:
        errors = [{"field": None, "message": m} for m in exc.messages]
    first = errors[0] if errors else {"field": None, "message": "Refused."}
    return _error(request, 400, first["message"], first["field"], errors)


ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut}


def responses(ok, code=200, **extra):
    return {code: ok, **ERRORS, **extra}


# --- input types -------------------------------------------------------------------------


_storable_text = flag_schemas.storable_text


def _text(value):
    if not _storable_text(value):
        raise ValueError("must be text without NUL characters or lone surrogates")
    return value


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[str, Field(min_length=1, max_length=60, pattern=NAME_RE.pattern), AfterValidator(_text)]
FlagKey = Annotated[str, Field(min_length=1, max_length=300, pattern=FLAG_KEY_RE.pattern)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FlagValue = bool | int | FiniteFloat | Text
BigInt = Annotated[int, Field(ge=-(2**62), le=2**62)]
DesiredStateName = Literal["RUNNING", "STOPPED", "TERMINATED"]
BackendName = Literal["local", "skypilot"]
RestartPolicyName = Literal["never", "on_failure", "always"]
FlagStyleName = Literal["plain", "dashdash"]


class Page(Schema):
    limit: int = Field(50, ge=1, le=500, description="At most this many items")
    offset: int = Field(0, ge=0, le=10**12, description="Skip this many items")


def paginate(queryset, page, serialize=None):
    count = queryset.count()
    items = list(queryset[page.offset : page.offset + page.limit])
    next_offset = page.offset + len(items) if page.offset + len(items) < count else None
    return {
        "items": [serialize(i) for i in items] if serialize else items,
        "count": count,
        "limit": page.limit,
        "offset": page.offset,
        "next_offset": next_offset,
    }


class PageOut(Schema):
    count: int
    limit: int
    offset: int
    next_offset: int | None = Field(None, description="Pass as offset for the next page; null on the last page")


# --- output schemas ------------------------------------------------------------------------


class JobOut(Schema):
    id: int
    experiment: str
    attempt: int
    run_number: int
    generation: int
    backend: str
    name: str
    command: str
    flags: dict[str, Any]
    resources: dict[str, Any]
    cluster_name: str
    sky_job_id: int | None
    launch_request_id: str
    status: str
    created_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    failure_kind: str
    failure_reason: str
    error_message: str
    log_path: str
    cost: float | None
    url: str

    @staticmethod
    def resolve_experiment(obj):
        return obj.experiment.name

    @staticmethod
    def resolve_url(obj):
        return obj.get_absolute_url()


class ExperimentOut(Schema):
    id: int
    name: str
    description: str
    command: str
    flags: dict[str, Any]
    flag_style: str
    accelerators: str
    num_nodes: int
    cpus: str
    memory: str
    infra: str
    use_spot: bool
    disk_size: int | None
    image_id: str
    setup: str
    envs: dict[str, Any]
    workdir: str
    autostop_minutes: int | None
    managed: bool
    backend: str
    restart_policy: str
    max_restarts: int
    tags: list[Any]
    sweep: str | None
    starred: bool
    desired_state: str
    generation: int
    observed_generation: int
    phase: str
    status_reason: str
    status_message: str
    failure_count: int
    next_attempt_at: datetime | None
    last_reconciled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    url: str

    @staticmethod
    def resolve_sweep(obj):
        return obj.sweep.name if obj.sweep_id else None

    @staticmethod
    def resolve_url(obj):
        return obj.get_absolute_url()


class ExperimentDetailOut(ExperimentOut):
    unknown_flags: list[str] = Field(description="Flags that no schema describes (allowed, and marked)")
    out_of_date: bool = Field(description="The active job runs an older spec")
    active_job: JobOut | None
    last_job: JobOut | None


class ExperimentPageOut(PageOut):
    items: list[ExperimentOut]


class JobPageOut(PageOut):
    items: list[JobOut]


class ClusterOut(Schema):
    id: int
    name: str
    backend: str
    status: str
    resources: str
    num_nodes: int
    infra: str
    launched_at: datetime | None
    last_seen_at: datetime
    autostop: int | None
    hourly_cost: float | None
    total_cost: float | None
    status_message: str
    owned: bool


class ClusterPageOut(PageOut):
    items: list[ClusterOut]


class StatusOut(Schema):
    name: str
    desired_state: str
    phase: str
    status_reason: str
    status_message: str
    in_sync: bool = Field(description="The last reconcile found nothing left to do")
    generation: int
    observed_generation: int
    out_of_date: bool
    failure_count: int
    next_attempt_at: datetime | None
    last_reconciled_at: datetime | None
    active_job: JobOut | None
    last_job: JobOut | None
    cluster: ClusterOut | None


class FlagSchemaOut(Schema):
    id: int
    namespace: str
    path: str
    type: str
    type_name: str
    default: Any = None
    choices: list[Any]
    description: str
    required: bool
    source: str


class FlagSchemaPageOut(PageOut):
    items: list[FlagSchemaOut]


class SweepOut(Schema):
    id: int
    name: str
    description: str
    base: str | None
    kind: str
    parameters: dict[str, Any]
    samples: int | None
    seed: int | None
    max_concurrent: int | None
    created_at: datetime
    url: str
    counts: dict[str, Any]

    @staticmethod
    def resolve_base(obj):
        return obj.base.name if obj.base_id else None

    @staticmethod
    def resolve_url(obj):
        return obj.get_absolute_url()

    @staticmethod
    def resolve_counts(obj):
        return sweeps.counts(obj)


class SweepDetailOut(SweepOut):
    experiments: list[ExperimentOut]

    @staticmethod
    def resolve_experiments(obj):
        return list(obj.experiments.select_related("sweep").order_by("id"))


class SweepPageOut(PageOut):
    items: list[SweepOut]


class HeartbeatOut(Schema):
    name: str
    finished_at: datetime | None
    ok: bool
    late: bool
    summary: str


class BackendHealthOut(Schema):
    backend: str
    reachable: bool
    last_ok_at: datetime | None
    last_error: str


class HealthOut(Schema):
    status: Literal["ok", "degraded"]
    database: bool
    loops: list[HeartbeatOut]
    backends: list[BackendHealthOut]


class QueuedOut(Schema):
    queued: bool
    task: str


class LogOut(Schema):
    job: int
    text: str
    offset: int = Field(description="Where the next read starts: pass it back as ?offset=")
    complete: bool = Field(description="The job has ended and all its output was read")


class CancelOut(Schema):
    job: JobOut
    message: str


class CountOut(Schema):
    changed: int


# --- input schemas ----------------------------------------------------------------------------


class In(Schema):
    """A request body: JSON types are taken as they are (no 0 for false, no "3" for 3)."""

    model_config = ConfigDict(strict=True)


class ExperimentIn(In):
    name: Name = Field(description="Unique slug: lowercase letters, digits and hyphens")
    command: Text = Field(min_length=1, description="The base command; flags are appended as key=value")
    description: Text = ""
    flags: dict[FlagKey, FlagValue] = {}
    flag_style: FlagStyleName = "plain"
    accelerators: Annotated[Text, Field(max_length=100)] = ""
    num_nodes: int = Field(1, ge=1, le=10000)
    cpus: Annotated[Text, Field(max_length=20)] = ""
    memory: Annotated[Text, Field(max_length=20)] = ""
    infra: Annotated[Text, Field(max_length=200)] = ""
    use_spot: bool = False
    disk_size: int | None = Field(None, ge=1, le=1_000_000)
    image_id: Annotated[Text, Field(max_length=300)] = ""
    setup: Text = ""
    envs: dict[Text, FlagValue] = {}
    workdir: Annotated[Text, Field(max_length=500)] = ""
    autostop_minutes: int | None = Field(None, ge=0, le=1_000_000)
    managed: bool = False
    backend: BackendName | None = Field(None, description="Defaults to the server's default backend")
    restart_policy: RestartPolicyName = "never"
    max_restarts: int = Field(3, ge=0, le=10000)
    tags: list[Annotated[Text, Field(max_length=50)]] = Field([], max_length=100)
    starred: bool = False
    desired_state: DesiredStateName = "STOPPED"


class ExperimentPatch(In):
    """Only the fields sent change; a spec change bumps the generation."""

    command: Text | None = Field(None, min_length=1)
    description: Text | None = None
    flags: dict[FlagKey, FlagValue] | None = None
    flag_style: FlagStyleName | None = None
    accelerators: Annotated[Text, Field(max_length=100)] | None = None
    num_nodes: int | None = Field(None, ge=1, le=10000)
    cpus: Annotated[Text, Field(max_length=20)] | None = None
    memory: Annotated[Text, Field(max_length=20)] | None = None
    infra: Annotated[Text, Field(max_length=200)] | None = None
    use_spot: bool | None = None
    disk_size: int | None = Field(None, ge=1, le=1_000_000)
    image_id: Annotated[Text, Field(max_length=300)] | None = None
    setup: Text | None = None
    envs: dict[Text, FlagValue] | None = None
    workdir: Annotated[Text, Field(max_length=500)] | None = None
    autostop_minutes: int | None = Field(None, ge=0, le=1_000_000)
    managed: bool | None = None
    backend: BackendName | None = None
    restart_policy: RestartPolicyName | None = None
    max_restarts: int | None = Field(None, ge=0, le=10000)
    tags: list[Annotated[Text, Field(max_length=50)]] | None = Field(None, max_length=100)
    starred: bool | None = None
    desired_state: DesiredStateName | None = None


NULLABLE_FIELDS = {"disk_size", "autostop_minutes"}


class StateIn(In):
    desired_state: DesiredStateName


class FlagsIn(In):
    flags: dict[FlagKey, FlagValue]
    merge: bool = Field(False, description="Keep flags not named here (default: replace them all)")


class RangeIn(In):
    min: int | FiniteFloat
    max: int | FiniteFloat
    log: bool = False
    type: Literal["int", "float"] | None = None


class SweepIn(In):
    name: Name
    base: Annotated[Text, Field(min_length=1, max_length=60)] = Field(description="The base experiment's id or name")
    kind: Literal["grid", "random"] = "grid"
    parameters: dict[FlagKey, list[FlagValue] | RangeIn] = Field(
        description="flag path -> list of values (grid or random), or {min, max, log, type} (random)"
    )
    samples: int | None = Field(None, ge=1, le=sweeps.MAX_CHILDREN, description="Random sweeps: how many children")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Random sweeps: repeatable samples")
    max_concurrent: int | None = Field(None, ge=1, le=10000, description="At most this many children run at once")
    desired_state: DesiredStateName = "STOPPED"
    description: Text = ""

    @model_validator(mode="after")
    def _samples_for_random(self):
        if self.kind == "random" and self.samples is None:
            raise ValueError("a random sweep needs samples")
        return self


class FlagSchemaQuery(Page):
    q: Annotated[Text, Field(max_length=300)] = Field("", description="Match in the path or description")
    namespace: Annotated[Text, Field(max_length=200)] = ""


class ExperimentQuery(Page):
    desired_state: DesiredStateName | None = None
    phase: Annotated[Text, Field(max_length=20)] | None = None
    tag: Annotated[Text, Field(max_length=50)] | None = None
    sweep: Annotated[Text, Field(max_length=60)] | None = None
    q: Annotated[Text, Field(max_length=200)] | None = Field(None, description="Match in the name")


class LogQuery(Schema):
    offset: int = Field(0, ge=0, le=2**53, description="Byte offset to read from")


# --- lookups ---------------------------------------------------------------------------------


def _by_ref(queryset, ref, what, name_ok=None):
    """Find a row by numeric id or by name; 404 otherwise."""
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_ID_DIGITS:
        found = queryset.filter(pk=int(ref)).first()
        if found is not None:
            return found
    if _storable_text(ref) and len(ref) <= 200 and (name_ok is None or name_ok(ref)):
        found = queryset.filter(name=ref).first()
        if found is not None:
            return found
    raise ApiError(404, f"No {what} {ref!r}.")


def get_experiment(ref):
    return _by_ref(Experiment.objects.select_related("sweep"), ref, "experiment", NAME_RE.match)


def get_job(ref):
    return _by_ref(Job.objects.select_related("experiment"), ref, "job")


def get_sweep(ref):
    return _by_ref(Sweep.objects.select_related("base"), ref, "sweep", NAME_RE.match)


def _user(request):
    return request.auth


def _detail(experiment):
    """The experiment as ExperimentDetailOut reads it: its properties give the jobs and unknown flags."""
    return experiment


def _save_new(experiment):
    try:
        with transaction.atomic():
            experiment.save()
    except IntegrityError:
        raise ApiError(409, f"An experiment named {experiment.name!r} already exists.", "name") from None


# --- experiments -------------------------------------------------------------------------------


@api.get("/experiments", response=responses(ExperimentPageOut), tags=["experiments"])
def list_experiments(request, params: Query[ExperimentQuery]):
    """Experiments, newest first; filter by desired state, phase, tag, sweep or name."""
    qs = Experiment.objects.select_related("sweep").order_by("-created_at", "-id")
    if params.desired_state:
        qs = qs.filter(desired_state=params.desired_state)
    if params.phase:
        qs = qs.filter(phase=params.phase.upper())
    if params.tag:
        qs = qs.tagged(params.tag)
    if params.sweep:
        qs = qs.filter(sweep__name=params.sweep)
    if params.q:
        qs = qs.filter(name__icontains=params.q)
    return paginate(qs, params)


@api.post("/experiments", response=responses(ExperimentDetailOut, 201), tags=["experiments"])
def create_experiment(request, payload: ExperimentIn):
    """Create an experiment. Flags are checked and coerced against the flag schemas."""
    data = payload.dict()
    if data["backend"] is None:
        data.pop("backend")
    desired = data.pop("desired_state")
    if Experiment.objects.filter(name=data["name"]).exists():
        raise ApiError(409, f"An experiment named {data['name']!r} already exists.", "name")
    experiment = Experiment(**data, desired_state=desired, created_by=_user(request))
    if desired == DesiredState.RUNNING:
        experiment.run_number = 1
    experiment.full_clean(validate_unique=False)
    with transaction.atomic():
        _save_new(experiment)
        Event.record(experiment, Event.Kind.CREATED, "Created through the API", user=_user(request), actor="api")
        if desired == DesiredState.RUNNING:
            experiment.reconcile_soon()
    return Status(201, _detail(experiment))


@api.get("/experiments/{id}", response=responses(ExperimentDetailOut), tags=["experiments"])
def get_experiment_detail(request, id: str):
    """One experiment by id or name, with its active and last job."""
    return _detail(get_experiment(id))


@api.patch("/experiments/{id}", response=responses(ExperimentDetailOut), tags=["experiments"])
def update_experiment(request, id: str, payload: ExperimentPatch):
    """Change some fields. A spec change bumps the generation; a running job shows as out of date until restarted."""
    experiment = get_experiment(id)
    changes = payload.dict(exclude_unset=True)
    desired = changes.pop("desired_state", None)
    for key, value in changes.items():
        if value is None and key not in NULLABLE_FIELDS:
            raise ApiError(400, f"{key} cannot be null.", key)
        setattr(experiment, key, value)
    if changes:
        experiment.full_clean(validate_unique=False)
        spec_changed = experiment.spec_changed()
        with transaction.atomic():
            experiment.save(update_fields=[*changes, "updated_at"])
            if spec_changed:
                Event.record(experiment, Event.Kind.SPEC, f"Spec edited through the API (generation {experiment.generation})",
                             user=_user(request), actor="api", data={"fields": sorted(changes)})
    if desired is not None:
        experiment.set_desired_state(desired, user=_user(request), source="api")
    return _detail(experiment)


@api.delete("/experiments/{id}", response=responses(None, 204), tags=["experiments"])
def delete_experiment(request, id: str):
    """Delete an experiment and its history. Refused (409) while a job is active: set STOPPED or TERMINATED first."""
    experiment = get_experiment(id)
    _, busy = Experiment.objects.filter(pk=experiment.pk).delete_idle(user=_user(request), actor="api")
    if busy:
        raise ApiError(409, f"{experiment.name} has an active job; set it STOPPED or TERMINATED and wait for the job to end.")
    return Status(204, None)


@api.post("/experiments/{id}/state", response=responses(ExperimentDetailOut), tags=["experiments"])
def set_state(request, id: str, payload: StateIn):
    """Set the desired state: RUNNING, STOPPED or TERMINATED. The reconciler makes it so."""
    experiment = get_experiment(id)
    experiment.set_desired_state(payload.desired_state, user=_user(request), source="api")
    return _detail(experiment)


@api.get("/experiments/{id}/status", response=responses(StatusOut), tags=["experiments"])
def experiment_status(request, id: str):
    """What the reconciler and poller last saw: phase, reason, jobs and cluster."""
    experiment = get_experiment(id)
    cluster = Cluster.objects.filter(backend=experiment.backend, name=experiment.cluster_name).first()
    return {
        "name": experiment.name,
        "desired_state": experiment.desired_state,
        "phase": experiment.phase,
        "status_reason": experiment.status_reason,
        "status_message": experiment.status_message,
        "in_sync": experiment.reconciled_run == experiment.run_number and experiment.last_reconciled_at is not None,
        "generation": experiment.generation,
        "observed_generation": experiment.observed_generation,
        "out_of_date": experiment.out_of_date,
        "failure_count": experiment.failure_count,
        "next_attempt_at": experiment.next_attempt_at,
        "last_reconciled_at": experiment.last_reconciled_at,
        "active_job": experiment.active_job,
        "last_job": experiment.last_job,
        "cluster": cluster,
    }


@api.get("/experiments/{id}/jobs", response=responses(JobPageOut), tags=["experiments"])
def experiment_jobs(request, id: str, params: Query[Page]):
    """The experiment's jobs (every execution), newest first."""
    experiment = get_experiment(id)
    return paginate(experiment.jobs.select_related("experiment").order_by("-attempt"), params)


@api.post("/experiments/{id}/flags", response=responses(ExperimentDetailOut), tags=["experiments"])
def set_flags(request, id: str, payload: FlagsIn):
    """Replace the flags (or merge with ``merge: true``). Checked and coerced against the flag schemas."""
    experiment = get_experiment(id)
    experiment.flags = {**experiment.flags, **payload.flags} if payload.merge else dict(payload.flags)
    experiment.full_clean(validate_unique=False)
    spec_changed = experiment.spec_changed()
    with transaction.atomic():
        experiment.save(update_fields=["flags", "updated_at"])
        if spec_changed:
            Event.record(experiment, Event.Kind.SPEC, f"Flags edited through the API (generation {experiment.generation})",
                         user=_user(request), actor="api")
    return _detail(experiment)


# --- jobs ------------------------------------------------------------------------------------------


@api.post("/jobs/{id}/cancel", response={**responses(CancelOut), 503: ErrorOut}, tags=["jobs"])
def cancel_job(request, id: str):
    """Cancel an active job (by id or name, e.g. sd-my-exp-3). The experiment is not relaunched for it."""
    from clusters.backends import get_backend
    from clusters.backends.base import BackendError, BackendUnreachable

    from . import reconciler

    job = get_job(id)
    if not job.is_active:
        raise ApiError(409, f"Job {job.name} is not active (it is {job.status}).")
    experiment = job.experiment
    token = f"api-{uuid.uuid4().hex}"
    if not reconciler.claim(experiment.pk, token):
        raise ApiError(409, f"{experiment.name} is being reconciled right now; try again in a moment.")
    try:
        job.refresh_from_db()
        if not job.is_active:
            raise ApiError(409, f"Job {job.name} is not active (it is {job.status}).")
        try:
            get_backend(job.backend).cancel(job.cluster_name or experiment.cluster_name, job.sky_job_id,
                                            request_id=job.launch_request_id)
        except BackendUnreachable as exc:
            raise ApiError(503, f"The {job.backend} backend is unreachable: {exc.message}") from None
        except BackendError as exc:
            raise ApiError(409, f"Could not cancel {job.name}: {exc.message}") from None
        job.status = JobStatus.CANCELLED
        job.ended_at = timezone.now()
        job.save(update_fields=["status", "ended_at"])
        Event.record(experiment, Event.Kind.CANCEL, f"Attempt {job.attempt} cancelled through the API", job=job,
                     user=_user(request), actor="api")
    finally:
        reconciler.release(experiment.pk, token)
    return {"job": job, "message": f"Cancelled {job.name}."}


@api.get("/jobs/{id}/logs", response={**responses(LogOut), 503: ErrorOut}, tags=["jobs"])
def job_logs(request, id: str, params: Query[LogQuery]):
    """Read a job's output from a byte offset; poll again with the returned offset to follow it."""
    from clusters.backends import get_backend
    from clusters.backends.base import BackendError, BackendUnreachable

    job = get_job(id)
    try:
        chunk = get_backend(job.backend).read_log(job.cluster_name, job.sky_job_id, job.log_path, params.offset)
    except BackendUnreachable as exc:
        raise ApiError(503, f"The {job.backend} backend is unreachable: {exc.message}") from None
    except BackendError as exc:
        raise ApiError(409, f"Cannot read the log of {job.name}: {exc.message}") from None
    return {"job": job.pk, "text": chunk.text, "offset": chunk.offset, "complete": chunk.complete}


# --- clusters, health, flag schemas, loops -------------------------------------------------------------


@api.get("/clusters", response=responses(ClusterPageOut), tags=["clusters"])
def list_clusters(request, params: Query[Page]):
    """Clusters as the backends last reported them."""
    return paginate(Cluster.objects.order_by("backend", "name"), params)


@api.get("/health", response=responses(HealthOut), tags=["system"])
def health(request):
    """The control loops' last runs and the backends' reachability."""
    loops = []
    intervals = {"poll": settings.SKYDECK_POLL_INTERVAL, "reconcile": settings.SKYDECK_RECONCILE_INTERVAL}
    for beat in Heartbeat.objects.filter(name__in=list(intervals)).order_by("name"):
        loops.append({"name": beat.name, "finished_at": beat.finished_at, "ok": beat.ok,
                      "late": beat.is_late(intervals[beat.name]), "summary": beat.summary})
    backends = list(BackendHealth.objects.order_by("backend"))
    degraded = any(not b.reachable for b in backends) or any(not lp["ok"] or lp["late"] for lp in loops)
    return {"status": "degraded" if degraded else "ok", "database": True, "loops": loops, "backends": backends}


@api.get("/flag-schemas", response=responses(FlagSchemaPageOut), tags=["flags"])
def list_flag_schemas(request, params: Query[FlagSchemaQuery]):
    """Known flags: imported from models, entered in the admin, or learnt from experiments."""
    from django.db.models import Q

    qs = FlagSchema.objects.order_by("namespace", "path")
    if params.namespace:
        qs = qs.filter(namespace=params.namespace)
    if params.q:
        qs = qs.filter(Q(path__icontains=params.q) | Q(description__icontains=params.q))
    return paginate(qs, params)


def _enqueue(task, name):
    try:
        task.delay()
    except Exception as exc:  # noqa: BLE001 - the broker is down: say so, do not crash
        logger.warning("could not enqueue %s", name, exc_info=True)
        raise ApiError(503, f"Could not queue the {name}: {exc}") from None
    return Status(202, {"queued": True, "task": name})


@api.post("/refresh", response={**responses(QueuedOut, 202), 503: ErrorOut}, tags=["system"])
def refresh(request):
    """Poll the backends now (queued for the worker)."""
    from .tasks import poll

    return _enqueue(poll, "poll")


@api.post("/reconcile", response={**responses(QueuedOut, 202), 503: ErrorOut}, tags=["system"])
def reconcile(request):
    """Reconcile every experiment now (queued for the worker)."""
    from .tasks import reconcile_all

    return _enqueue(reconcile_all, "reconcile")


# --- sweeps -----------------------------------------------------------------------------------------------


@api.get("/sweeps", response=responses(SweepPageOut), tags=["sweeps"])
def list_sweeps(request, params: Query[Page]):
    """Sweeps, newest first, with counts of their experiments by phase."""
    return paginate(Sweep.objects.select_related("base").order_by("-created_at", "-id"), params)


@api.post("/sweeps", response=responses(SweepDetailOut, 201), tags=["sweeps"])
def create_sweep(request, payload: SweepIn):
    """Make a grid or random sweep of experiments from a base experiment."""
    try:
        base = get_experiment(payload.base)
    except ApiError:
        raise ApiError(400, f"No base experiment {payload.base!r}.", "base") from None
    if Sweep.objects.filter(name=payload.name).exists():
        raise ApiError(409, f"A sweep named {payload.name!r} already exists.", "name")
    parameters = {
        path: spec.dict(exclude_none=True) if isinstance(spec, RangeIn) else list(spec)
        for path, spec in payload.parameters.items()
    }
    try:
        sweep = sweeps.create_sweep(
            name=payload.name, base=base, kind=payload.kind, parameters=parameters, samples=payload.samples,
            seed=payload.seed, max_concurrent=payload.max_concurrent, desired_state=payload.desired_state,
            description=payload.description, user=_user(request),
        )
    except IntegrityError:
        raise ApiError(409, "A sweep or experiment with one of these names was created at the same time.", "name") from None
    return Status(201, sweep)


@api.get("/sweeps/{id}", response=responses(SweepDetailOut), tags=["sweeps"])
def get_sweep_detail(request, id: str):
    """A sweep with its experiments and their states."""
    return get_sweep(id)


@api.post("/sweeps/{id}/state", response=responses(CountOut), tags=["sweeps"])
def set_sweep_state(request, id: str, payload: StateIn):
    """Set the desired state of every experiment in the sweep (start, stop or terminate all)."""
    sweep = get_sweep(id)
    return {"changed": sweeps.set_state(sweep, payload.desired_state, user=_user(request), source="api")}


@api.post("/sweeps/{id}/rerun-failed", response=responses(CountOut), tags=["sweeps"])
def rerun_failed(request, id: str):
    """Run the sweep's failed experiments again."""
    sweep = get_sweep(id)
    return {"changed": sweeps.rerun_failed(sweep, user=_user(request))}
