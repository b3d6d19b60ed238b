"""What the API reads and what it answers.

Request bodies are strict: JSON types are taken as they are (no ``"3"`` for 3,
no ``true`` for 1, no NaN), and a body must be a JSON object. Answers are
built from the models with ``ModelSchema``; what a model does not hold (a URL,
a related row's name, counts) comes from a resolver.
"""

import functools
import operator
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from django_filters import BooleanFilter, CharFilter, ChoiceFilter
from ninja import Field, ModelSchema, Schema
from ninja.orm.fields import AnyObject
from pydantic import AfterValidator, BeforeValidator, ConfigDict, WithJsonSchema, create_model, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined

from clusters.models import Backend, BackendHealth, Cluster, Heartbeat

from .. import sweeps
from ..filters import ExperimentFilter
from ..intent import EDITABLE_FIELDS
from ..models import (
    DesiredState,
    Experiment,
    FlagSchema,
    FlagStyle,
    Job,
    LimitAction,
    RestartPolicy,
    StallAction,
    Sweep,
    default_backend,
)
from ..validators import (
    FLAG_KEY_HELP,
    FLAG_KEY_MAX,
    FLAG_KEY_RE,
    MAX_SWEEP_CHILDREN,
    NAME_HELP,
    NAME_MAX,
    NAME_RE,
    storable_text,
)


def choice_of(choices):
    """The Literal type of a model's TextChoices, so the API and the model name the same values."""
    return Literal[tuple(choices.values)]


DesiredStateName = choice_of(DesiredState)
BackendName = choice_of(Backend)
RestartPolicyName = choice_of(RestartPolicy)
FlagStyleName = choice_of(FlagStyle)
LimitActionName = choice_of(LimitAction)
StallActionName = choice_of(StallAction)
Dollars = Annotated[float, Field(ge=0.01, le=1e9, allow_inf_nan=False)]


# --- text, names and flags --------------------------------------------------------------------


def _refuse(kind, message):
    return PydanticCustomError(kind, "{message}", {"message": message})


def _storable(value):
    if not storable_text(value):
        raise _refuse("text", "must be text without NUL characters or lone surrogates")
    return value


def _name(value):
    if not NAME_RE.fullmatch(value):
        raise _refuse("name", NAME_HELP)
    return value


def _flag_key(key):
    # The form's words: the API and the dashboard refuse a flag name alike.
    if len(key) > FLAG_KEY_MAX or not FLAG_KEY_RE.fullmatch(key):
        raise _refuse("flag_name", f"Flag name {key!r} is not valid: {FLAG_KEY_HELP}.")
    return key


Text = Annotated[str, AfterValidator(_storable)]
Name = Annotated[
    str,
    AfterValidator(_name),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_RE.pattern}),
]
FlagKey = Annotated[
    str,
    AfterValidator(_flag_key),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": FLAG_KEY_MAX, "pattern": FLAG_KEY_RE.pattern}),
]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FlagValue = bool | int | FiniteFloat | Text


# --- request bodies ------------------------------------------------------------------------------


class In(Schema):
    """A request body: a JSON object whose JSON types are taken as they are."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="wrap")
    @classmethod
    def _an_object(cls, data, handler):
        # ninja's Schema reads attributes of anything; a body must be an object, not [] or "x" or null.
        if not isinstance(data, dict):
            raise _refuse("object_type", "The body must be a JSON object.")
        return handler(data)


class ExperimentIn(In):
    """A new experiment. Flags are checked and coerced against the flag schemas."""

    name: Name = Field(description="Unique slug: lowercase letters, digits and hyphens")
    command: Annotated[Text, Field(min_length=1)] = Field(
        description="The base command; flags are appended as key=value"
    )
    description: Text = ""
    flags: dict[FlagKey, FlagValue] = Field({}, description="Dotted flag name -> string, number or boolean")
    flag_style: FlagStyleName = Field("plain", description="plain: key=value; dashdash: --key=value")
    accelerators: Annotated[Text, Field(max_length=100)] = Field("", description="e.g. H100:8 or A100:1")
    num_nodes: int = Field(1, ge=1, le=10000)
    cpus: Annotated[Text, Field(max_length=20)] = Field("", description="e.g. 4 or 4+")
    memory: Annotated[Text, Field(max_length=20)] = Field("", description="GiB, e.g. 16 or 16+")
    infra: Annotated[Text, Field(max_length=200)] = Field("", description="cloud/region/zone, e.g. aws/us-east-1")
    use_spot: bool = False
    disk_size: int | None = Field(None, ge=1, le=1_000_000, description="GiB; null for the default")
    image_id: Annotated[Text, Field(max_length=300)] = ""
    setup: Text = ""
    envs: dict[Text, FlagValue] = Field({}, description="Environment variables: NAME -> value")
    workdir: Annotated[Text, Field(max_length=500)] = ""
    autostop_minutes: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Stop (or tear down) a finished run's idle cluster after this many minutes; null for the default",
    )
    keep_cluster_up: bool = Field(False, description="Never stop or tear down the cluster when idle")
    managed: bool = Field(False, description="Run as a SkyPilot managed job")
    backend: BackendName = Field(default_factory=default_backend, description="Defaults to the server's default")
    restart_policy: RestartPolicyName = "never"
    max_restarts: int = Field(3, ge=0, le=10000)
    max_cost: Dollars | None = Field(
        None, description="Budget in $: stop once its jobs have cost this much (all attempts); null for none"
    )
    max_runtime_minutes: int | None = Field(
        None, ge=1, le=1_000_000, description="Stop a run after this many minutes of wall time; null for none"
    )
    limit_action: LimitActionName = Field(
        "STOPPED", description="The desired state a reached budget or runtime limit sets"
    )
    stall_minutes: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Stall watchdog: act after this many minutes without output; null for the default, 0 for off",
    )
    stall_action: StallActionName = Field(
        "restart", description="restart: as an infrastructure failure; flag: only say so"
    )
    tags: list[Annotated[Text, Field(max_length=50)]] = Field([], max_length=100)
    starred: bool = False
    desired_state: DesiredStateName = Field("STOPPED", description="RUNNING starts its first run")


def _no_default(json_schema):
    json_schema.pop("default", None)


def all_optional(schema, name, *, without=(), doc=None):
    """``schema`` with every field optional, for a PATCH: a field left out is not changed.

    Optional is not nullable: a field takes null only where ``schema`` takes it.
    """
    fields = {
        key: (
            Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation,
            Field(None, description=info.description, json_schema_extra=_no_default),
        )
        for key, info in schema.model_fields.items()
        if key not in without
    }
    model = create_model(name, __base__=schema.__base__, __doc__=doc, **fields)
    model.__module__ = schema.__module__
    return model


ExperimentPatch = all_optional(
    ExperimentIn,
    "ExperimentPatch",
    without={"name"},
    doc="Only the fields sent change; a spec change bumps the generation.",
)


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
    base: Annotated[Text, Field(min_length=1, max_length=NAME_MAX)] = Field(
        description="The base experiment's id or name"
    )
    kind: choice_of(Sweep.Kind) = "grid"
    parameters: dict[FlagKey, list[FlagValue] | RangeIn] = Field(
        description="flag path -> list of values (grid or random), or {min, max, log, type} (random)"
    )
    samples: int | None = Field(None, ge=1, le=MAX_SWEEP_CHILDREN, description="Random sweeps: how many children")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Random sweeps: repeatable samples")
    max_concurrent: int | None = Field(None, ge=1, le=10000, description="At most this many children run at once")
    max_cost: Dollars | None = Field(None, description="Budget in $ for all its experiments together; null for none")
    limit_action: LimitActionName = Field("STOPPED", description="What its experiments are set to when it is spent")
    desired_state: DesiredStateName = "STOPPED"
    description: Text = ""

    @model_validator(mode="after")
    def _samples_for_random(self):
        if self.kind == "random" and self.samples is None:
            raise ValueError("a random sweep needs samples")
        return self

    def parameters_as_data(self):
        return {
            path: spec.dict(exclude_none=True) if isinstance(spec, RangeIn) else list(spec)
            for path, spec in self.parameters.items()
        }


# --- queries -----------------------------------------------------------------------------------


def _query_type(flt):
    if isinstance(flt, ChoiceFilter):
        return Literal[tuple(str(value) for value, _ in flt.extra["choices"])]
    if isinstance(flt, BooleanFilter):
        return bool
    if isinstance(flt, CharFilter):
        return Annotated[Text, Field(max_length=flt.extra.get("max_length"))]
    raise TypeError(f"No query type for {type(flt).__name__} {flt.field_name}")


def _upper(value):
    return value.upper() if isinstance(value, str) else value


class FilterQuery(Schema):
    """The query parameters of a FilterSet, validated before the FilterSet filters."""

    aliases: ClassVar[dict[str, str]] = {}  # old name -> the filter it stands for

    def filter_data(self):
        data = self.dict(exclude_none=True)
        for old, new in self.aliases.items():
            if old in data:
                data.setdefault(new, data.pop(old))
        return data


def filter_query(filterset, name, *, aliases=None):
    """A query schema with one optional parameter per filter of ``filterset``, typed as the filter is.

    ``aliases`` maps an old parameter name to the filter it stands for (case-insensitive, deprecated).
    """
    fields = {}
    for key, flt in filterset.base_filters.items():
        help_text = flt.extra.get("help_text") or flt.label
        fields[key] = (_query_type(flt) | None, Field(None, description=str(help_text or key)))
    for old, new in (aliases or {}).items():
        fields[old] = (
            Annotated[_query_type(filterset.base_filters[new]), BeforeValidator(_upper)] | None,
            Field(
                None,
                description=f"Deprecated: the old name of {new}, which wins when both are given.",
                json_schema_extra={"deprecated": True},
            ),
        )
    model = create_model(name, __base__=FilterQuery, **fields)
    model.aliases = dict(aliases or {})
    return model


ExperimentQuery = filter_query(
    ExperimentFilter, "ExperimentQuery", aliases={"phase": "state", "desired_state": "desired"}
)


class FlagSchemaQuery(Schema):
    q: Annotated[Text, Field(max_length=300)] = Field(
        "", description="Match in the path or description, best matches first, one row per path"
    )
    namespace: Annotated[Text, Field(max_length=200)] = ""


class LogQuery(Schema):
    offset: int = Field(0, ge=0, le=2**53, description="Byte offset to read from")


# --- answers ---------------------------------------------------------------------------------------


def _without_none(annotation):
    members = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) not in (Union, UnionType) or len(members) == len(get_args(annotation)):
        return annotation
    return functools.reduce(operator.or_, members)


def _json_type(column):
    """What a JSON column holds, told by its default (ninja calls every JSON column an object)."""
    return {dict: dict[str, Any], list: list[Any]}.get(column.default, Any)


class FromModel(Schema):
    """An answer built from a model row: each column it shows is always there, and null only where the column can be.

    ninja's ModelSchema reads ``blank=True`` as "may be left out or null", which suits a form, not an answer.
    """

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        model = getattr(getattr(cls, "Meta", None), "model", None)
        columns = {f.name: f for f in model._meta.concrete_fields} if model else {}
        changed = False
        for name, info in cls.model_fields.items():
            column = columns.get(name)
            if column is None:
                continue
            annotation = info.annotation if column.null else _without_none(info.annotation)
            if _without_none(annotation) is AnyObject:
                annotation = _json_type(column) | None if column.null else _json_type(column)
            if annotation is not info.annotation or not info.is_required():
                info.annotation, info.default, info.default_factory = annotation, PydanticUndefined, None
                changed = True
        if changed:
            cls.model_rebuild(force=True)


class JobOut(ModelSchema, FromModel):
    experiment: str
    url: str

    class Meta:
        model = Job
        fields = "__all__"

    @staticmethod
    def resolve_experiment(job):
        return job.experiment.name

    @staticmethod
    def resolve_url(job):
        return job.get_absolute_url()


STATUS_FIELDS = [
    "generation",
    "observed_generation",
    "phase",
    "status_reason",
    "status_message",
    "failure_count",
    "next_attempt_at",
    "last_reconciled_at",
]


class ExperimentOut(ModelSchema, FromModel):
    """The spec and settings a user edits, the desired state, and the status the reconciler writes."""

    tags: list[str]
    sweep: str | None
    url: str

    class Meta:
        model = Experiment
        fields = ["id", "name", *EDITABLE_FIELDS, "desired_state", *STATUS_FIELDS, "created_at", "updated_at"]

    @staticmethod
    def resolve_sweep(experiment):
        return experiment.sweep.name if experiment.sweep_id else None

    @staticmethod
    def resolve_url(experiment):
        return experiment.get_absolute_url()


class ExperimentDetailOut(ExperimentOut):
    unknown_flags: list[str] = Field(description="Flags that no schema describes (allowed, and marked)")
    out_of_date: bool = Field(description="The active job runs an older spec")
    active_job: JobOut | None
    last_job: JobOut | None


class ClusterOut(ModelSchema, FromModel):
    owned: bool = Field(description="Named sd-…: SkyDeck launched it")

    class Meta:
        model = Cluster
        fields = "__all__"


class StatusOut(ModelSchema, FromModel):
    """What the reconciler and poller last saw."""

    in_sync: bool = Field(description="The last reconcile found nothing left to do")
    out_of_date: bool
    active_job: JobOut | None
    last_job: JobOut | None
    cluster: ClusterOut | None

    class Meta:
        model = Experiment
        fields = ["name", "desired_state", *STATUS_FIELDS]

    @staticmethod
    def resolve_in_sync(experiment):
        return experiment.reconciled_run == experiment.run_number and experiment.last_reconciled_at is not None

    @staticmethod
    def resolve_cluster(experiment):
        return Cluster.objects.filter(backend=experiment.backend, name=experiment.cluster_name).first()


class FlagSchemaOut(ModelSchema, FromModel):
    class Meta:
        model = FlagSchema
        exclude = ["updated_at"]


class SweepOut(ModelSchema, FromModel):
    base: str | None
    url: str
    counts: dict[str, Any] = Field(description="Children by phase and by desired state, and how many are active")

    class Meta:
        model = Sweep
        exclude = ["created_by"]

    @staticmethod
    def resolve_base(sweep):
        return sweep.base.name if sweep.base_id else None

    @staticmethod
    def resolve_url(sweep):
        return sweep.get_absolute_url()

    @staticmethod
    def resolve_counts(sweep):
        return sweeps.counts(sweep)


class SweepDetailOut(SweepOut):
    experiments: list[ExperimentOut]

    @staticmethod
    def resolve_experiments(sweep):
        return list(sweep.experiments.select_related("sweep").order_by("id"))


class HeartbeatOut(ModelSchema, FromModel):
    late: bool = Field(description="No run for two intervals")

    class Meta:
        model = Heartbeat
        fields = ["name", "finished_at", "ok", "summary"]


class BackendHealthOut(ModelSchema, FromModel):
    class Meta:
        model = BackendHealth
        fields = ["backend", "reachable", "last_ok_at", "last_error"]


class HealthOut(Schema):
    status: Literal["ok", "degraded"]
    database: bool = Field(description="The database answered a query")
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
