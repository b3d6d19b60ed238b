"""/api/jobs: one execution of an experiment, by id or by name (sd-<experiment>-<attempt>)."""

from ninja import Query, Router, Status

from .. import intent, logs
from ..models import Job
from .auth import actor
from .errors import ApiError, find, responses
from .schemas import CancelOut, LogOut, LogQuery

router = Router(tags=["jobs"])


def get_job(ref):
    return find(Job.objects.select_related("experiment"), ref, "job")


@router.post("/{id}/cancel", response=responses(CancelOut, 202))
def cancel_job(request, id: str):
    """Ask for an active job to be cancelled; the reconciler cancels it and does not relaunch for it."""
    job = get_job(id)
    if not intent.cancel_job(actor(request), job):
        job.refresh_from_db(fields=["status"])
        raise ApiError(409, f"Job {job.name} is not active (it is {job.status}).")
    return Status(202, {"job": job, "message": f"Cancel of {job.name} requested."})


@router.get("/{id}/logs", response=responses(LogOut))
def job_logs(request, id: str, params: Query[LogQuery]):
    """A job's output from a byte offset, as SkyDeck keeps it; poll again with the returned offset to follow it."""
    job = get_job(id)
    if job.is_active:
        job.mark_watched()
    chunk = logs.read(job.log_path, params.offset)
    return {"job": job.pk, "text": chunk.text, "offset": chunk.offset, "complete": job.output_complete and chunk.at_end}
