"""Applies what the poller saw to Jobs: status, exit code, times, cost, lost jobs.

Returns the ids of the experiments whose jobs or clusters changed, so the
caller can reconcile them at once (a finished job is restarted by policy in
the same poll, not a minute later).

When a job of a backend that keeps log copies (SkyPilot) ends, its copy gets
its last refresh here, before the failure is judged: the exit codes SkyPilot
prints at the end decide between a failure of the user's command and one of
the infrastructure.
"""

import logging
from concurrent.futures import ThreadPoolExecutor, wait

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from clusters.backends import get_backend
from clusters.backends.base import BackendError
from clusters.models import OWNED_PREFIX, BackendHealth, ClusterStatus
from clusters.poller import poll_backend

from . import logs
from .models import (
    ACTIVE_JOB_STATUSES,
    FAILED_JOB_STATUSES,
    Event,
    Experiment,
    FailureKind,
    FailureRule,
    Job,
    JobStatus,
)

logger = logging.getLogger(__name__)

FINAL_STATUSES = {s for s in JobStatus.values if s not in ACTIVE_JOB_STATUSES}
# How long a poll waits for the last log refresh of the jobs that just ended (the log task finishes it later).
LAST_REFRESH_SECONDS = 15.0


def poll_all(backends):
    """Poll each backend once and apply the observations. Returns (polls, changed experiment ids)."""
    changed = set()
    polls = []
    for name in backends:
        in_flight = list(
            Job.objects.filter(backend=name).in_flight_requests().values_list("launch_request_id", flat=True)
        ) + list(
            Experiment.objects.filter(backend=name)
            .exclude(cluster_request_id="")
            .values_list("cluster_request_id", flat=True)
        )
        managed = Job.objects.active().filter(backend=name, experiment__managed=True).exists()
        was_reachable = BackendHealth.objects.filter(backend=name).values_list("reachable", flat=True).first()
        result = poll_backend(name, request_ids=in_flight, managed=managed)
        polls.append(result)
        if not result.skipped and not result.reachable and was_reachable is not False:
            Event.record(
                None,
                Event.Kind.FAILURE,
                f"The {name} backend became unreachable: {result.error}",
                actor="poller",
                data={"notify": "backend_unreachable", "backend": name},
            )
        if result.usable:
            changed |= apply(result)
    return polls, changed


def apply(result):
    """Write one backend's observations to Job rows."""
    changed = set()
    now = timezone.now()
    _resolve_cluster_requests(result, changed)
    jobs = list(Job.objects.filter(backend=result.backend, status__in=ACTIVE_JOB_STATUSES).select_related("experiment"))
    updates = {}
    for job in jobs:
        update = _observe_job(job, result, now)
        if update:
            updates[job] = update
    _last_log_refresh(result.backend, updates)
    _classify(updates)
    _summarize(updates)
    for job, update in updates.items():
        with transaction.atomic():
            _save(job, update, now)
        changed.add(job.experiment_id)
    # Experiments whose owned cluster appeared, changed or vanished need a look too.
    owned = {name for name in result.clusters if name.startswith(OWNED_PREFIX)}
    names = {name[len(OWNED_PREFIX) :] for name in owned}
    for exp in (
        Experiment.objects.filter(backend=result.backend)
        .filter(Q(name__in=names, desired_state__in=["STOPPED", "TERMINATED"], phase__in=["STOPPED", "TERMINATED"]))
        .only("id", "name", "desired_state", "phase")
    ):
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
            Event.record(
                exp,
                Event.Kind.FAILURE,
                f"Cluster {kind} failed: {res.message}",
                actor="poller",
                data={"reason": res.reason},
            )
            Experiment.objects.filter(pk=exp.pk).update(
                status_reason=res.reason or "ClusterRequestFailed", status_message=res.message
            )
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
        if res.cluster_name and not job.cluster_name:
            update["cluster_name"] = res.cluster_name
        # Fall through to the queue for a fresher status in the same pass.
        info = _find(job, result, job_id=res.job_id)
        if info is not None:
            update.update(_from_info(job, info, result.clusters.get(job.cluster_name or res.cluster_name)))
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
            update = {"sky_job_id": info.job_id, **_from_info(job, info, cluster)}
            Event.record(
                job.experiment,
                Event.Kind.ADOPT,
                f"Adopted {job.name} (job {info.job_id} on {job.cluster_name})",
                job=job,
                actor="poller",
            )
            return update
        return {}
    info = _find(job, result, job_id=job.sky_job_id) if job.cluster_name in result.jobs else None
    if info is not None:
        return _from_info(job, info, cluster)
    if not _older_than_snapshot(job, result):
        return {}  # submitted after the backend was asked: absence proves nothing yet
    if cluster is None or job.cluster_name in result.gone:
        return _ended_in_copy(job, result.backend, "torn down", now) or _lost(
            job, f"Cluster {job.cluster_name} vanished.", now
        )
    if cluster.status == ClusterStatus.STOPPED:
        return _ended_in_copy(job, result.backend, "stopped", now) or _lost(
            job, f"Cluster {job.cluster_name} stopped under the job (preempted or autostopped).", now
        )
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


def _ended_in_copy(job, backend_name, what, now):
    """The end SkyPilot printed in the job's log copy, when its cluster went before a poll saw the end.

    A cluster's own idle timer (autostop) tears it down only after its job ended; if the
    polls were slow or SkyDeck was down meanwhile, the copy the worker kept may already
    hold SkyPilot's "Job finished (status: ...)" line. Then the job is not lost, and is
    not run again: its status is the one printed.
    """
    if not job.log_complete or not job.log_path:
        return None
    finished_status = getattr(get_backend(backend_name), "finished_status", None)
    status = finished_status(job.log_path) if finished_status else None
    if status is None or status in ACTIVE_JOB_STATUSES:
        return None
    update = {
        "status": status,
        "ended_at": now,
        "error_message": f"Ended ({status.lower()}, as its output says) before its cluster was {what}.",
    }
    if job.exit_codes and job.exit_code is None:
        update["exit_code"] = _exit_code(job.exit_codes)
    if status in FAILED_JOB_STATUSES:
        update["failure_kind"], update["failure_reason"] = _failure_of(status)
    return update


def _failure_of(status):
    """(failure kind, failure reason) of a failed status: the user's command for FAILED and FAILED_SETUP."""
    kind = FailureKind.USER if status in (JobStatus.FAILED, JobStatus.FAILED_SETUP) else FailureKind.INFRA
    return kind, "".join(p.title() for p in status.lower().split("_"))


def _lost(job, message, now):
    return {
        "status": JobStatus.LOST,
        "failure_kind": FailureKind.INFRA,
        "failure_reason": "Lost",
        "error_message": message,
        "ended_at": now,
    }


def _from_info(job, info, cluster=None):
    update = {}
    if info.status != job.status:
        update["status"] = info.status
    for attr in ("started_at", "ended_at", "submitted_at"):
        value = getattr(info, attr)
        if value and getattr(job, attr) != value:
            update[attr] = value
    if info.exit_code is not None and info.exit_code != job.exit_code:
        update["exit_code"] = info.exit_code
    if info.exit_codes and info.exit_codes != job.exit_codes:
        update["exit_codes"] = info.exit_codes
        update.setdefault("exit_code", _exit_code(info.exit_codes))
    cost = (
        info.cost
        if info.cost is not None
        else _cost(cluster, update.get("started_at") or job.started_at, info.ended_at)
    )
    if cost is not None and cost != job.cost:
        update["cost"] = cost
    status = update.get("status", job.status)
    if status in FAILED_JOB_STATUSES and job.failure_kind == FailureKind.NONE:
        kind, reason = _failure_of(status)
        update["failure_kind"] = kind
        update.setdefault("failure_reason", reason)
        if info.message:
            update["error_message"] = info.message
    if status in FINAL_STATUSES and not (update.get("ended_at") or job.ended_at):
        update["ended_at"] = timezone.now()
    return update


def _exit_code(codes):
    """The exit code of a job from its nodes' codes: the first that is not 0 (or 0)."""
    return next((c for c in codes if c != 0), 0) if codes else None


def _cost(cluster, started, ended):
    """What the job cost so far: the cluster's hourly price over the job's run time (None when unknown)."""
    if cluster is None or cluster.hourly_cost is None or started is None:
        return None
    seconds = ((ended or timezone.now()) - started).total_seconds()
    return round(cluster.hourly_cost * max(0.0, seconds) / 3600.0, 6)


def _last_log_refresh(backend_name, updates):
    """Jobs that just ended get their log copy completed, side by side; their exit codes decide the failure kind."""
    backend = get_backend(backend_name)
    if not hasattr(backend, "sync_log"):
        # The job wrote its output to the file itself: once it has ended, the file is complete.
        for update in updates.values():
            if update.get("status") in FINAL_STATUSES:
                update["log_complete"] = True
        return
    ended = [
        (job, update)
        for job, update in updates.items()
        if update.get("status") in FINAL_STATUSES and job.sky_job_id is not None and job.log_path and job.cluster_name
    ]
    if not ended:
        return

    def refresh(item):
        job, _ = item
        try:
            return backend.sync_log(job.cluster_name, job.sky_job_id, job.log_path)
        except BackendError as exc:
            logger.info("last log refresh of %s failed: %s", job.name, exc.message)
            return None

    pool = ThreadPoolExecutor(max_workers=settings.SKYDECK_POLL_CONCURRENCY, thread_name_prefix="last-log")
    futures = [pool.submit(refresh, item) for item in ended]
    # Bounded: a slow server delays the judgement of a failure a little, never the whole poll.
    done, _ = wait(futures, timeout=LAST_REFRESH_SECONDS)
    pool.shutdown(wait=False)
    for (job, update), future in zip(ended, futures, strict=True):
        synced = future.result() if future in done else None
        if synced is None:
            continue
        if synced.finished:
            update["log_complete"] = True
        if synced.exit_codes and not job.exit_codes:
            update["exit_codes"] = synced.exit_codes
            update["exit_code"] = _exit_code(synced.exit_codes)
        if update.get("status") == JobStatus.FAILED and synced.finished and not synced.exit_codes:
            # SkyPilot says FAILED, yet no node's command exited non-zero: the infrastructure failed it.
            update["failure_kind"] = FailureKind.INFRA
            update["failure_reason"] = "FailedWithoutExitCode"


# Failures the rules look at: the job's own command failed (launch failures have reasons of their own).
CLASSIFIED = (JobStatus.FAILED, JobStatus.FAILED_SETUP)
CLASSIFY_LINES = 200


def _classify(updates):
    """Name each failure by the first failure rule its exit code or last lines match (FailureRule)."""
    failed = [(job, update) for job, update in updates.items() if update.get("status") in CLASSIFIED]
    if not failed:
        return
    rules = list(FailureRule.objects.filter(enabled=True))
    if not rules:
        return
    for job, update in failed:
        exit_code = update.get("exit_code", job.exit_code)
        output = logs.tail(job.log_path, lines=CLASSIFY_LINES)
        for rule in rules:
            matched = rule.matches(exit_code, output)
            if matched:
                update["failure_kind"] = rule.kind
                update["failure_reason"] = rule.reason
                update["error_message"] = f"{rule.reason}: {matched}"
                break


SUMMARY_LINES = 20
SUMMARY_CHARS = 2000


def _summarize(updates):
    """A failure nothing named: what the job printed last stands for its error (the page and the status show it)."""
    for job, update in updates.items():
        status = update.get("status")
        if status not in FAILED_JOB_STATUSES or update.get("error_message") or job.error_message:
            continue
        if not update.get("log_complete", job.log_complete):
            continue  # the copy may lack the end; the page reads the file itself meanwhile
        summary = logs.plain_tail(job.log_path, lines=SUMMARY_LINES)[-SUMMARY_CHARS:]
        if summary:
            update["error_message"] = summary


def _save(job, update, now):
    previous = job.status
    for key, value in update.items():
        setattr(job, key, value)
    job.save(update_fields=list(update))
    if job.status != previous:
        detail = (
            f" (exit code {job.exit_code})"
            if job.exit_code is not None and job.status not in ACTIVE_JOB_STATUSES
            else ""
        )
        message = f"Attempt {job.attempt}: {previous} → {job.status}{detail}"
        if job.error_message and job.status in FAILED_JOB_STATUSES:
            message += f": {logs.last_line(job.error_message)}"
        kind = Event.Kind.FAILURE if job.status in FAILED_JOB_STATUSES else Event.Kind.JOB
        data = {"status": job.status}
        if job.status in FAILED_JOB_STATUSES:
            data.update(notify="job_failed", reason=job.failure_reason, kind=job.failure_kind)
        elif job.status == JobStatus.SUCCEEDED:
            data["notify"] = "succeeded"
        Event.record(job.experiment, kind, message, job=job, actor="poller", data=data)
