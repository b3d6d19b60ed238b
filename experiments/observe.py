"""Applies what the poller saw to Jobs: status, exit code, times, lost jobs.

Returns the ids of the experiments whose jobs or clusters changed, so the
caller can reconcile them at once (a finished job is restarted by policy in
the same poll, not a minute later).
"""

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clusters.models import OWNED_PREFIX, ClusterStatus
from clusters.poller import poll_backend

from .models import ACTIVE_JOB_STATUSES, FAILED_JOB_STATUSES, Event, Experiment, FailureKind, Job, JobStatus

logger = logging.getLogger(__name__)

FINAL_STATUSES = {s for s in JobStatus.values if s not in ACTIVE_JOB_STATUSES}


def poll_all(backends):
    """Poll each backend once and apply the observations. Returns (polls, changed experiment ids)."""
    changed = set()
    polls = []
    for name in backends:
        in_flight = list(
            Job.objects.filter(backend=name).in_flight_requests().values_list("launch_request_id", flat=True)
        ) + list(
            Experiment.objects.filter(backend=name).exclude(cluster_request_id="").values_list("cluster_request_id", flat=True)
        )
        managed = Job.objects.active().filter(backend=name, experiment__managed=True).exists()
        result = poll_backend(name, request_ids=in_flight, managed=managed)
        polls.append(result)
        if result.usable:
            changed |= apply(result)
    return polls, changed


def apply(result):
    """Write one backend's observations to Job rows."""
    changed = set()
    now = timezone.now()
    _resolve_cluster_requests(result, changed)
    jobs = list(
        Job.objects.filter(backend=result.backend, status__in=ACTIVE_JOB_STATUSES).select_related("experiment")
    )
    for job in jobs:
        with transaction.atomic():
            update = _observe_job(job, result, now)
            if update:
                _save(job, update, now)
                changed.add(job.experiment_id)
    # Experiments whose owned cluster appeared, changed or vanished need a look too.
    owned = {name for name in result.clusters if name.startswith(OWNED_PREFIX)}
    names = {name[len(OWNED_PREFIX):] for name in owned}
    for exp in Experiment.objects.filter(backend=result.backend).filter(
        Q(name__in=names, desired_state__in=["STOPPED", "TERMINATED"], phase__in=["STOPPED", "TERMINATED"])
    ).only("id", "name", "desired_state", "phase"):
        status = result.clusters[exp.cluster_name].status
        if exp.desired_state == "TERMINATED" or status in (ClusterStatus.UP, ClusterStatus.INIT):
            changed.add(exp.id)
    return changed


def _resolve_cluster_requests(result, changed):
    for exp in Experiment.objects.filter(backend=result.backend).exclude(cluster_request_id=""):
        res = result.requests.get(exp.cluster_request_id)
        if res is None or not res.done:
            continue
        kind = exp.cluster_request_kind
        Experiment.objects.filter(pk=exp.pk, cluster_request_id=exp.cluster_request_id).update(
            cluster_request_id="", cluster_request_kind=""
        )
        if res.ok:
            Event.record(exp, Event.Kind.INFO, f"Cluster {kind} finished", actor="poller")
        else:
            Event.record(exp, Event.Kind.FAILURE, f"Cluster {kind} failed: {res.message}", actor="poller",
                         data={"reason": res.reason})
            Experiment.objects.filter(pk=exp.pk).update(status_reason=res.reason or "ClusterRequestFailed",
                                                        status_message=res.message)
        changed.add(exp.id)


def _observe_job(job, result, now):
    """The fields to change on one active job, or {} when nothing changed."""
    # 1. A launch request in flight.
    if job.status == JobStatus.LAUNCHING and job.launch_request_id:
        res = result.requests.get(job.launch_request_id)
        if res is None or not res.done:
            return {}
        if not res.ok:
            kind = FailureKind.INFRA if res.retryable else FailureKind.USER
            return {
                "status": JobStatus.FAILED_LAUNCH,
                "failure_kind": kind,
                "failure_reason": res.reason or "LaunchFailed",
                "error_message": res.message,
                "ended_at": now,
            }
        update = {"status": JobStatus.PENDING, "sky_job_id": res.job_id, "launch_request_id": ""}
        if res.log_path:
            update["log_path"] = res.log_path
        if res.cluster_name and not job.cluster_name:
            update["cluster_name"] = res.cluster_name
        # Fall through to the queue for a fresher status in the same pass.
        info = _find(job, result, job_id=res.job_id)
        if info is not None:
            update.update(_from_info(job, info))
        return update

    # 2. Managed jobs live in the controller's queue, not on a cluster of ours.
    if job.experiment.managed:
        if result.managed_jobs is None:
            return {}
        info = next((j for j in result.managed_jobs if job.sky_job_id is not None and j.job_id == job.sky_job_id), None)
        if info is None and job.sky_job_id is not None and _older_than_snapshot(job, result):
            return _lost(job, "The managed job vanished from SkyPilot's jobs queue.", now)
        return _from_info(job, info) if info else {}

    cluster = result.clusters.get(job.cluster_name)
    if job.sky_job_id is None:
        # Intent written, submission never confirmed: adopt a job with our name if one runs.
        info = _find(job, result, name=job.name)
        if info is not None:
            update = {"sky_job_id": info.job_id, **_from_info(job, info)}
            Event.record(job.experiment, Event.Kind.ADOPT, f"Adopted {job.name} (job {info.job_id} on {job.cluster_name})",
                         job=job, actor="poller")
            return update
        return {}
    info = _find(job, result, job_id=job.sky_job_id) if job.cluster_name in result.jobs else None
    if info is not None:
        return _from_info(job, info)
    if not _older_than_snapshot(job, result):
        return {}  # submitted after the backend was asked: absence proves nothing yet
    if cluster is None or job.cluster_name in result.gone:
        return _lost(job, f"Cluster {job.cluster_name} vanished.", now)
    if cluster.status == ClusterStatus.STOPPED:
        return _lost(job, f"Cluster {job.cluster_name} stopped under the job (preempted or autostopped).", now)
    if job.cluster_name not in result.jobs:
        return {}  # cluster INIT, or its queue could not be read this time
    return _lost(job, f"Job {job.sky_job_id} vanished from {job.cluster_name}'s queue.", now)


def _older_than_snapshot(job, result):
    """Was the job submitted before the backend was asked? Only then can its absence mean it vanished."""
    submitted = job.submitted_at or job.created_at
    return result.observed_at is None or (submitted is not None and submitted < result.observed_at)


def _find(job, result, *, job_id=None, name=None):
    for info in result.jobs.get(job.cluster_name, ()):
        if (job_id is not None and info.job_id == job_id) or (name and info.name == name):
            return info
    return None


def _lost(job, message, now):
    return {
        "status": JobStatus.LOST,
        "failure_kind": FailureKind.INFRA,
        "failure_reason": "Lost",
        "error_message": message,
        "ended_at": now,
    }


def _from_info(job, info):
    update = {}
    if info.status != job.status:
        update["status"] = info.status
    for attr in ("started_at", "ended_at", "submitted_at"):
        value = getattr(info, attr)
        if value and getattr(job, attr) != value:
            update[attr] = value
    if info.exit_code is not None and info.exit_code != job.exit_code:
        update["exit_code"] = info.exit_code
    if info.log_path and info.log_path != job.log_path:
        update["log_path"] = info.log_path
    if info.cost is not None and info.cost != job.cost:
        update["cost"] = info.cost
    status = update.get("status", job.status)
    if status in FAILED_JOB_STATUSES and job.failure_kind == FailureKind.NONE:
        update["failure_kind"] = FailureKind.USER if status in (JobStatus.FAILED, JobStatus.FAILED_SETUP) else FailureKind.INFRA
        update.setdefault("failure_reason", "".join(p.title() for p in status.lower().split("_")))
        if info.message:
            update["error_message"] = info.message
    if status in FINAL_STATUSES and not (update.get("ended_at") or job.ended_at):
        update["ended_at"] = timezone.now()
    return update


def _save(job, update, now):
    previous = job.status
    for key, value in update.items():
        setattr(job, key, value)
    job.save(update_fields=list(update))
    if job.status != previous:
        detail = f" (exit code {job.exit_code})" if job.exit_code is not None and job.status not in ACTIVE_JOB_STATUSES else ""
        message = f"Attempt {job.attempt}: {previous} → {job.status}{detail}"
        if job.error_message and job.status in FAILED_JOB_STATUSES:
            message += f": {job.error_message}"
        kind = Event.Kind.FAILURE if job.status in FAILED_JOB_STATUSES else Event.Kind.JOB
        Event.record(job.experiment, kind, message, job=job, actor="poller")
