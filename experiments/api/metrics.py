"""/api/jobs/{id}/metrics, /api/experiments/{id}/metrics: the numbers a job printed, read incrementally.

Each answer carries a ``cursor``; pass it back as ``since`` to get only the points stored
after it (every series' summary comes each time). Points are what the worker parsed from
the job's output (docs/metrics.md); nothing here reads a log.
"""

from typing import Annotated

from ninja import Field, Query, Router, Schema

from .. import metrics
from .auth import actor
from .errors import responses
from .experiments import get_experiment
from .jobs import get_job
from .schemas import In, Text

router = Router(tags=["metrics"])


class MetricsQuery(Schema):
    since: int = Field(0, ge=0, le=2**62, description="Only points stored after this cursor (the last answer's)")
    names: str = Field(
        "", max_length=4000, description="Comma-separated metric names to answer for; empty: every metric"
    )
    times: bool = Field(False, description="Also say when each point was printed (or read)")

    def name_list(self):
        return [n.strip() for n in self.names.split(",") if n.strip()][:200]


class SeriesOut(Schema):
    job: int
    attempt: int
    name: str
    points: int = Field(description="Points stored for this series now")
    thinned: int = Field(description="Older points dropped to keep at most `limit`")
    dense_from_step: int | None = Field(description="From this step on every point is kept; before it, only some")
    first_step: int | None
    last_step: int | None
    last_value: float | None = Field(description="The value at the highest step")
    min_value: float | None = Field(description="Over every point read, thinned ones included")
    max_value: float | None
    steps: list[int] = Field(description="Steps of the points after `since`, ascending")
    values: list[float]
    times: list[float] | None = Field(
        None, description="With times=true: when each was printed (or read), Unix seconds"
    )


class JobMetricsOut(Schema):
    job: int
    attempt: int
    names: list[str]
    series: list[SeriesOut]
    cursor: int = Field(description="Pass as since to read on")
    complete: bool = Field(description="The job has ended and all its output was read")
    limit: int = Field(description="At most this many points per series; older ones are thinned")


class AttemptOut(Schema):
    attempt: int
    job: int
    status: str
    started_at: str | None = None
    ended_at: str | None = None

    @staticmethod
    def resolve_started_at(obj):
        return obj["started_at"].isoformat() if obj["started_at"] else None

    @staticmethod
    def resolve_ended_at(obj):
        return obj["ended_at"].isoformat() if obj["ended_at"] else None


class ProblemOut(Schema):
    attempt: int
    message: str = Field(description="Why some of its output was not read as it should be (its metric pattern)")


class ExperimentMetricsOut(Schema):
    experiment: str
    pattern: str = Field(description="The experiment's own line format (a regular expression); empty: none")
    problems: list[ProblemOut]
    names: list[str]
    attempts: list[AttemptOut] = Field(description=f"The latest {metrics.ATTEMPTS_SHOWN} attempts, oldest first")
    series: list[SeriesOut] = Field(description="One per attempt and metric")
    cursor: int = Field(description="Pass as since to read on")
    live: bool = Field(description="A job of the experiment is running: more points may come")
    limit: int


class PatternIn(In):
    pattern: Annotated[Text, Field(max_length=metrics.PATTERN_MAX)] = Field(
        description="A regular expression: named groups are metrics, (?P<step>…) the step; "
        "or (?P<name>…)/(?P<value>…) pairs. Empty removes it."
    )


class PatternOut(Schema):
    experiment: str
    pattern: str
    changed: bool
    message: str


@router.get("/jobs/{id}/metrics", response=responses(JobMetricsOut))
def job_metrics(request, id: str, params: Query[MetricsQuery]):
    """A job's metric series, with the points stored after ``since``."""
    job = get_job(id)
    return metrics.job_metrics(job, since=params.since, names=params.name_list(), times=params.times)


@router.get("/experiments/{id}/metrics", response=responses(ExperimentMetricsOut))
def experiment_metrics(request, id: str, params: Query[MetricsQuery]):
    """An experiment's metric series across its latest attempts, with the points stored after ``since``."""
    experiment = get_experiment(id)
    return metrics.experiment_metrics(experiment, since=params.since, names=params.name_list(), times=params.times)


@router.put("/experiments/{id}/metric-pattern", response=responses(PatternOut, 200, 413))
def set_metric_pattern(request, id: str, payload: PatternIn):
    """Set (or, empty, remove) the experiment's own metric line format; every attempt's output is read again."""
    experiment = get_experiment(id)
    changed = metrics.set_pattern(actor(request), experiment, payload.pattern)
    pattern = metrics.pattern_of(experiment)
    message = ("Pattern saved" if pattern else "Pattern removed") if changed else "Unchanged"
    return {"experiment": experiment.name, "pattern": pattern, "changed": changed, "message": message + "."}
