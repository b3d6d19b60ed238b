"""/api/experiments: the user's experiments, and what they want of each."""

from ninja import Field, Query, Router, Status
from ninja.pagination import paginate

from .. import intent
from ..filters import ExperimentFilter
from ..models import Experiment
from ..validators import NAME_RE
from .auth import actor
from .errors import ApiError, find, responses
from .pagination import Page
from .schemas import (
    ExperimentDetailOut,
    ExperimentIn,
    ExperimentOut,
    ExperimentPatch,
    ExperimentQuery,
    FlagsIn,
    JobOut,
    StateIn,
    StatusOut,
)

router = Router(tags=["experiments"])


class ExperimentGuardrailsOut(ExperimentDetailOut):
    """The detail, with what its guardrails count and what one did."""

    spent: float = Field(description="What its jobs have cost, in $, over all attempts and restarts")
    halt_reason: str = Field(description="The guardrail that last set its desired state (BudgetExceeded, …), or ''")
    halt_message: str = Field(description="That guardrail's figures, in words")

    @staticmethod
    def resolve_spent(experiment):
        return experiment.spent()


def get_experiment(ref):
    return find(Experiment.objects.select_related("sweep"), ref, "experiment", NAME_RE.fullmatch)


@router.get("", response=responses(list[ExperimentOut]))
@paginate(Page)
def list_experiments(request, filters: Query[ExperimentQuery]):
    """Experiments, newest first, filtered as on the experiments page."""
    found = ExperimentFilter(filters.filter_data(), queryset=Experiment.objects.select_related("sweep"))
    if not found.is_valid():
        field, messages = next(iter(found.errors.items()))
        raise ApiError(422, f"{field}: {messages[0]}", field)
    return found.qs


@router.post("", response=responses(ExperimentGuardrailsOut, 201, 413))
def create_experiment(request, payload: ExperimentIn):
    """Create an experiment; 409 if the name is taken. Flags are checked and coerced against the flag schemas."""
    fields = payload.dict()
    desired = fields.pop("desired_state")
    experiment = intent.create(actor(request), Experiment(**fields), desired_state=desired)
    return Status(201, experiment)


@router.get("/{id}", response=responses(ExperimentGuardrailsOut))
def get_experiment_detail(request, id: str):
    """One experiment by id or name, with its active and last job."""
    return get_experiment(id)


@router.patch("/{id}", response=responses(ExperimentGuardrailsOut, 200, 413))
def update_experiment(request, id: str, payload: ExperimentPatch):
    """Change the fields sent. A spec change bumps the generation; a running job keeps the old spec until restarted."""
    experiment = get_experiment(id)
    intent.edit(actor(request), experiment, payload.dict(exclude_unset=True))
    return experiment


@router.delete("/{id}", response=responses(None, 204))
def delete_experiment(request, id: str):
    """Delete an experiment and its history. 409 while a job is active: set STOPPED or TERMINATED first."""
    experiment = get_experiment(id)
    _, kept = intent.delete(actor(request), [experiment])
    if kept:
        raise ApiError(
            409, f"{experiment.name} has an active job; set it STOPPED or TERMINATED and wait for the job to end."
        )
    return Status(204, None)


@router.post("/{id}/state", response=responses(ExperimentGuardrailsOut, 200, 413))
def set_state(request, id: str, payload: StateIn):
    """Set the desired state: RUNNING, STOPPED or TERMINATED. The reconciler makes it so."""
    experiment = get_experiment(id)
    intent.set_desired_state(actor(request), experiment, payload.desired_state)
    return experiment


@router.get("/{id}/status", response=responses(StatusOut))
def experiment_status(request, id: str):
    """What the reconciler and poller last saw: phase, reason, jobs and cluster."""
    return get_experiment(id)


@router.get("/{id}/jobs", response=responses(list[JobOut]))
@paginate(Page)
def experiment_jobs(request, id: str):
    """The experiment's jobs (every execution), newest first."""
    return get_experiment(id).jobs.select_related("experiment").order_by("-attempt")


@router.post("/{id}/flags", response=responses(ExperimentGuardrailsOut, 200, 413))
def set_flags(request, id: str, payload: FlagsIn):
    """Replace the flags (or merge with ``merge: true``). Checked and coerced against the flag schemas."""
    experiment = get_experiment(id)
    flags = {**experiment.flags, **payload.flags} if payload.merge else payload.flags
    intent.edit(actor(request), experiment, {"flags": flags})
    return experiment
