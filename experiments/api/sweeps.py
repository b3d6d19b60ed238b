"""/api/sweeps: sets of experiments made from a base experiment."""

from ninja import Router, Status
from ninja.pagination import paginate

from .. import sweeps
from ..models import Sweep
from ..validators import NAME_RE
from .auth import actor
from .errors import ApiError, find, responses
from .experiments import get_experiment
from .pagination import Page
from .schemas import CountOut, StateIn, SweepDetailOut, SweepIn, SweepOut

router = Router(tags=["sweeps"])


def get_sweep(ref):
    return find(Sweep.objects.select_related("base"), ref, "sweep", NAME_RE.fullmatch)


@router.get("", response=responses(list[SweepOut]))
@paginate(Page)
def list_sweeps(request):
    """Sweeps, newest first, with counts of their experiments by phase."""
    return Sweep.objects.select_related("base").order_by("-created_at", "-id")


@router.post("", response=responses(SweepDetailOut, 201, 413))
def create_sweep(request, payload: SweepIn):
    """Make a grid or random sweep of experiments from a base experiment."""
    try:
        base = get_experiment(payload.base)
    except ApiError:
        raise ApiError(400, f"No base experiment {payload.base!r}.", "base") from None
    if Sweep.objects.filter(name=payload.name).exists():
        raise ApiError(409, f"A sweep named {payload.name!r} already exists.", "name")
    sweep = sweeps.create_sweep(
        actor(request),
        name=payload.name,
        base=base,
        kind=payload.kind,
        parameters=payload.parameters_as_data(),
        samples=payload.samples,
        seed=payload.seed,
        max_concurrent=payload.max_concurrent,
        max_cost=payload.max_cost,
        limit_action=payload.limit_action,
        desired_state=payload.desired_state,
        description=payload.description,
    )
    return Status(201, sweep)


@router.get("/{id}", response=responses(SweepDetailOut))
def get_sweep_detail(request, id: str):
    """A sweep with its experiments and their states."""
    return get_sweep(id)


@router.post("/{id}/state", response=responses(CountOut, 200, 413))
def set_sweep_state(request, id: str, payload: StateIn):
    """Set the desired state of every experiment in the sweep (start, stop or terminate all)."""
    return {"changed": sweeps.set_state(actor(request), get_sweep(id), payload.desired_state)}


@router.post("/{id}/rerun-failed", response=responses(CountOut))
def rerun_failed(request, id: str):
    """Run the sweep's failed experiments again, each as a fresh run."""
    return {"changed": sweeps.rerun_failed(actor(request), get_sweep(id))}
