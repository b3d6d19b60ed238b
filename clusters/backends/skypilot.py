"""The SkyPilot backend: the real SDK, talking to a SkyPilot API server.

This is the only module that imports ``sky``, and it does so lazily inside
methods: importing ``sky`` costs seconds and memory and needs a writable
``$HOME``, and page views, ``manage.py check`` and test collection never need it.

Which API server: the SDK's own rules. With no configuration it talks to a
local API server on this machine (and starts one if none runs); with
``SKYPILOT_API_SERVER_ENDPOINT`` set it talks to a team's remote server.

Nothing here blocks on a launch: ``launch``/``exec``/``start``/``stop``/``down``
submit a request and return its id, and ``resolve_requests`` asks the server
about every request in flight with one ``api_status`` call. ``sky.get`` is
only used on a request that already finished (it answers at once) and on the
short calls a poll needs (``status``, ``queue``, ``cost_report``).
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from .base import (
    BackendError,
    BackendUnreachable,
    ClusterGone,
    ClusterInfo,
    InvalidSpec,
    JobInfo,
    LaunchSpec,
    LogChunk,
    NotSupported,
    RequestResult,
    Submission,
)

logger = logging.getLogger(__name__)

# At most this many finished requests are fetched (one ``sky.get`` each) per
# poll; the rest wait for the next poll, so a poll's calls stay bounded.
MAX_RESULTS_PER_POLL = 20
MAX_LOG_CHUNK = 256 * 1024

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# --- status mapping ---------------------------------------------------------------

# sky.ClusterStatus -> SkyDeck's Cluster.status. An autostopping cluster is on its
# way to STOPPED and takes no new work, so it counts as stopped already.
CLUSTER_STATUS = {
    "INIT": "INIT",
    "UP": "UP",
    "STOPPED": "STOPPED",
    "AUTOSTOPPING": "STOPPED",
}

# sky.JobStatus -> SkyDeck's Job.status (the same names, except INIT: a job
# SkyPilot has accepted but not yet scheduled is PENDING to SkyDeck).
JOB_STATUS = {
    "INIT": "PENDING",
    "PENDING": "PENDING",
    "SETTING_UP": "SETTING_UP",
    "RUNNING": "RUNNING",
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED",
    "FAILED_SETUP": "FAILED_SETUP",
    "FAILED_DRIVER": "FAILED_DRIVER",
    "CANCELLED": "CANCELLED",
}

# sky.jobs.ManagedJobStatus -> SkyDeck's Job.status. RECOVERING stays RUNNING:
# SkyPilot's controller is relaunching a preempted job, so SkyDeck must not.
MANAGED_JOB_STATUS = {
    "PENDING": "PENDING",
    "SUBMITTED": "PENDING",
    "DEPRECATED_SUBMITTED": "PENDING",
    "STARTING": "PENDING",
    "RUNNING": "RUNNING",
    "RECOVERING": "RUNNING",
    "WINDING_DOWN": "RUNNING",
    "CANCELLING": "CANCELLED",
    "CANCELLED": "CANCELLED",
    "SUCCEEDED": "SUCCEEDED",
    "FAILED": "FAILED",
    "FAILED_SETUP": "FAILED_SETUP",
    "FAILED_PRECHECKS": "FAILED_LAUNCH",
    "FAILED_NO_RESOURCE": "FAILED_LAUNCH",
    "FAILED_CONTROLLER": "FAILED_DRIVER",
}

REQUEST_ACTIVE = {"PENDING", "WAITING", "RUNNING"}


def _name(value):
    """An enum's name (or a plain string) as text."""
    if value is None:
        return ""
    return getattr(value, "value", None) or getattr(value, "name", None) or str(value)


def map_cluster_status(value):
    return CLUSTER_STATUS.get(_name(value).upper(), "INIT")


def map_job_status(value):
    return JOB_STATUS.get(_name(value).upper(), "PENDING")


def map_managed_job_status(value):
    return MANAGED_JOB_STATUS.get(_name(value).upper(), "PENDING")


# --- error mapping ------------------------------------------------------------------

SKY_CHECK_HINT = "run `sky check` where the SkyPilot API server runs to see which clouds are enabled"

# Every exception type in sky.exceptions (and the builtins the SDK raises),
# by class name -> (kind, reason, retryable). ``kind`` picks the BackendError class.
# A name missing here falls back to its base classes, then to a retryable error.
ERRORS = {
    # The API server did not answer, or will not talk to us: nothing is known.
    "ApiServerConnectionError": ("unreachable", "BackendUnreachable", True),
    "ApiServerAuthenticationError": ("unreachable", "Unauthorized", True),
    "APIVersionMismatchError": ("unreachable", "ApiVersionMismatch", True),
    "ServerTemporarilyUnavailableError": ("unreachable", "BackendUnreachable", True),
    "ConcurrentWorkerExhaustedError": ("unreachable", "BackendBusy", True),
    "ConnectionError": ("unreachable", "BackendUnreachable", True),
    "Timeout": ("unreachable", "BackendUnreachable", True),
    # No cloud, or no capacity.
    "NoCloudAccessError": ("error", "NoCloudAccess", False),
    "ResourcesUnavailableError": ("error", "ResourcesUnavailable", True),  # refined in map_exception
    "KubeAPIUnreachableError": ("error", "ResourcesUnavailable", True),
    "ProvisionPrechecksError": ("error", "ProvisionPrechecksFailed", False),
    "ProvisionUnsupportedError": ("unsupported", "NotSupported", False),
    "NoClusterLaunchedError": ("error", "NoClusterLaunched", True),
    # The cluster is gone or not usable right now.
    "ClusterDoesNotExist": ("gone", "ClusterGone", True),
    "ClusterNotUpError": ("error", "ClusterNotUp", True),
    "CachedClusterUnavailable": ("error", "ClusterNotUp", True),
    "ClusterSetUpError": ("error", "ClusterSetUpFailed", True),
    "ClusterStatusFetchingError": ("error", "ClusterStatusUnknown", True),
    "FetchClusterInfoError": ("error", "ClusterStatusUnknown", True),
    "CommandError": ("error", "CommandFailed", True),
    "CommandFailureException": ("error", "CommandFailed", True),
    "NetworkError": ("error", "NetworkError", True),
    "SkyletInternalError": ("error", "SkyletError", True),
    "SkyletMethodNotImplementedError": ("error", "SkyletError", True),
    "SkyletUnavailableError": ("error", "SkyletError", True),
    "CloudError": ("error", "CloudError", True),
    "AWSAzFetchingError": ("error", "CloudError", True),
    "ExecutionRetryableError": ("error", "BackendBusy", True),
    "ExecutionPausedError": ("error", "BackendBusy", True),
    "ExecutionPoolFullError": ("error", "BackendBusy", True),
    "RequestCancelled": ("error", "RequestCancelled", True),
    "RequestInterruptedError": ("error", "RequestCancelled", True),
    "RequestAlreadyExistsError": ("error", "RequestConflict", True),
    "ClientError": ("error", "SkyPilotClientError", True),
    "VolumeNotReadyError": ("error", "VolumeNotReady", True),
    "InconsistentHighAvailabilityError": ("error", "ServerMisconfigured", True),
    # What SkyPilot cannot do here.
    "NotSupportedError": ("unsupported", "NotSupported", False),
    "APINotSupportedError": ("unsupported", "NotSupported", False),
    # A spec that can never launch as written.
    "InvalidClusterNameError": ("invalid", "InvalidSpec", False),
    "ResourcesMismatchError": ("invalid", "InvalidSpec", False),
    "InvalidSkyPilotConfigError": ("invalid", "InvalidSpec", False),
    "InvalidCloudConfigs": ("invalid", "InvalidSpec", False),
    "KubernetesValidationError": ("invalid", "InvalidSpec", False),
    "StorageSpecError": ("invalid", "InvalidSpec", False),
    "StorageNameError": ("invalid", "InvalidSpec", False),
    "StorageModeError": ("invalid", "InvalidSpec", False),
    "StorageSourceError": ("invalid", "InvalidSpec", False),
    "StorageError": ("error", "StorageError", True),
    "StorageInitError": ("error", "StorageError", True),
    "StorageBucketCreateError": ("error", "StorageError", True),
    "StorageBucketGetError": ("error", "StorageError", True),
    "StorageBucketDeleteError": ("error", "StorageError", True),
    "StorageUploadError": ("error", "StorageError", True),
    "StorageExternalDeletionError": ("error", "StorageError", True),
    "NonExistentStorageAccountError": ("error", "StorageError", True),
    "SkyPilotExcludeArgsBaseException": ("error", "SkyPilotError", True),
    "GitError": ("invalid", "InvalidSpec", False),
    "InvalidWorkspaceNameError": ("invalid", "InvalidSpec", False),
    "WorkspaceAmbiguousError": ("invalid", "InvalidSpec", False),
    "InvalidRecipeNameError": ("invalid", "InvalidSpec", False),
    "RecipeAlreadyExistsError": ("invalid", "InvalidSpec", False),
    "VolumeNotFoundError": ("invalid", "InvalidSpec", False),
    "VolumeTopologyConflictError": ("invalid", "InvalidSpec", False),
    "PortDoesNotExistError": ("invalid", "InvalidSpec", False),
    "PoolDoesNotExistError": ("invalid", "InvalidSpec", False),
    "UserRequestRejectedByPolicy": ("invalid", "InvalidSpec", False),
    "RestfulPolicyError": ("invalid", "InvalidSpec", False),
    "ValueError": ("invalid", "InvalidSpec", False),
    # Who we are is not allowed to do this.
    "InvalidCloudCredentials": ("error", "Unauthorized", False),
    "CloudUserIdentityError": ("error", "Unauthorized", False),
    "ClusterOwnerIdentityMismatchError": ("error", "Unauthorized", False),
    "PermissionDeniedError": ("error", "Unauthorized", False),
    "NoWorkspaceAccessError": ("error", "Unauthorized", False),
    # Managed jobs and serving.
    "ManagedJobReachedMaxRetriesError": ("error", "ManagedJobGaveUp", False),
    "ManagedJobStatusError": ("error", "ManagedJobError", True),
    "ManagedJobUserCancelledError": ("error", "RequestCancelled", True),
    "ServeUserTerminatedError": ("error", "RequestCancelled", True),
}

KINDS = {
    "unreachable": BackendUnreachable,
    "gone": ClusterGone,
    "invalid": InvalidSpec,
    "unsupported": NotSupported,
    "error": BackendError,
}


def clean(text):
    """SkyPilot's messages without colour codes or trailing blank space."""
    return ANSI_RE.sub("", str(text or "")).strip()


def _lookup(exc):
    for cls in type(exc).__mro__:
        if cls.__name__ in ERRORS:
            return ERRORS[cls.__name__]
    return None


def map_exception(exc):
    """Any exception the SDK raised -> a BackendError with a reason a user can act on."""
    if isinstance(exc, BackendError):
        return exc
    entry = _lookup(exc)
    name = type(exc).__name__
    try:
        message = clean(exc) or name
    except Exception:  # noqa: BLE001 - an exception whose __str__ fails still needs an outcome
        message = name
    if entry is None:
        return BackendError(f"SkyPilot error ({name}): {message}", reason="SkyPilotError", retryable=True)
    kind, reason, retryable = entry
    if name == "NoCloudAccessError" or reason == "NoCloudAccess":
        message = f"No cloud is enabled on the SkyPilot API server: {SKY_CHECK_HINT}. ({message})"
    elif reason == "ResourcesUnavailable" and not getattr(exc, "failover_history", None):
        # Nothing was even tried: no enabled infra can offer these resources.
        if "not enabled" in message:
            reason, retryable = "NoCloudAccess", False
            message = f"{message} — enable it, or {SKY_CHECK_HINT}."
        else:
            reason, retryable = "InvalidSpec", False
            message = (f"No enabled infra offers these resources: {message} "
                       "Check infra, accelerators, cpus and memory.")
        kind = "error"
    elif reason == "ResourcesUnavailable":
        message = f"No capacity right now (SkyDeck retries with backoff): {message}"
    elif kind == "unreachable":
        message = f"SkyPilot API server unreachable: {message}"
    return KINDS[kind](message, reason=reason, retryable=retryable)


# --- task building -------------------------------------------------------------------


def _number_or_plus(value, field):
    """'4', '4+', '4.5' for cpus/memory; anything else is refused."""
    text = str(value).strip()
    if not text:
        return None
    if not re.fullmatch(r"\d+(\.\d+)?\+?", text):
        raise InvalidSpec(f'{field} must be a number, optionally followed by "+" (e.g. 4 or 4+); got {text!r}.')
    return text


def resources_kwargs(spec: LaunchSpec):
    """The sky.Resources arguments of a spec; empty fields are left to SkyPilot."""
    kwargs = {}
    if spec.infra:
        kwargs["infra"] = spec.infra.strip()
    if spec.accelerators:
        kwargs["accelerators"] = spec.accelerators.strip()
    cpus = _number_or_plus(spec.cpus, "cpus") if spec.cpus else None
    if cpus:
        kwargs["cpus"] = cpus
    memory = _number_or_plus(spec.memory, "memory") if spec.memory else None
    if memory:
        kwargs["memory"] = memory
    if spec.use_spot:
        kwargs["use_spot"] = True
    if spec.disk_size:
        kwargs["disk_size"] = int(spec.disk_size)
    if spec.image_id:
        kwargs["image_id"] = spec.image_id.strip()
    return kwargs


def build_task(spec: LaunchSpec):
    """A sky.Task for the spec, checked locally. Raises InvalidSpec with SkyPilot's reason."""
    import sky

    if spec.num_nodes < 1:
        raise InvalidSpec("num_nodes must be at least 1.")
    if spec.workdir and not Path(spec.workdir).expanduser().is_dir():
        raise InvalidSpec(f"workdir {spec.workdir!r} does not exist on the SkyDeck worker.")
    try:
        task = sky.Task(
            name=spec.job_name,
            setup=spec.setup or None,
            run=spec.command,
            envs={str(k): str(v) for k, v in spec.envs.items()} or None,
            workdir=spec.workdir or None,
            num_nodes=spec.num_nodes,
        )
        task.set_resources(sky.Resources(**resources_kwargs(spec)))
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - SkyPilot raises ValueError and friends
        mapped = map_exception(exc)
        if mapped.retryable:
            raise mapped from exc
        raise InvalidSpec(f"SkyPilot refused the spec: {mapped.message}", reason=mapped.reason) from exc
    return task


def _ts(value):
    if value in (None, "", 0, -1):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _get(record, key, default=None):
    """A field of a SkyPilot record, dict or pydantic model alike."""
    if isinstance(record, dict):
        return record.get(key, default)
    return getattr(record, key, default)


class SkyPilotBackend:
    """SkyDeck's ComputeBackend on the SkyPilot SDK."""

    name = "skypilot"

    def __init__(self):
        # SDK calls by name, for the dashboard's "calls per poll" and the tests that count them.
        self.calls = Counter()
        self._hourly_cost = {}  # cluster name -> $/h, from the last cost report
        self._lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------

    @staticmethod
    def _sdk():
        os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        import sky

        return sky

    def _call(self, name, fn, *args, **kwargs):
        """One SDK call, counted, with its exception mapped to an outcome."""
        with self._lock:
            self.calls[name] += 1
        try:
            return fn(*args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes an outcome
            raise map_exception(exc) from exc

    def _result(self, name, fn, *args, **kwargs):
        """Submit a short request and wait for its result (status, queue, cancel...)."""
        sky = self._sdk()
        request_id = self._call(name, fn, *args, **kwargs)
        return self._call("get", sky.get, request_id)

    def total_calls(self):
        return sum(self.calls.values())

    # --- launching --------------------------------------------------------------

    def validate(self, spec: LaunchSpec) -> None:
        build_task(spec)

    def launch(self, spec: LaunchSpec) -> Submission:
        sky = self._sdk()
        task = build_task(spec)
        self._validate_on_server(task)
        if spec.managed:
            request_id = self._call("jobs.launch", sky.jobs.launch, task, name=spec.job_name)
        else:
            request_id = self._call(
                "launch", sky.launch, task, cluster_name=spec.cluster_name,
                idle_minutes_to_autostop=spec.autostop_minutes,
            )
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    def exec(self, spec: LaunchSpec) -> Submission:
        sky = self._sdk()
        task = build_task(spec)
        request_id = self._call("exec", sky.exec, task, cluster_name=spec.cluster_name)
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    def _validate_on_server(self, task):
        """The server's own check of the task (resources, infra names): a bad spec fails here, not minutes later."""
        from sky.client import sdk
        from sky.utils import dag_utils

        self._call("validate", sdk.validate, dag_utils.convert_entrypoint_to_dag(task))

    def start(self, cluster_name: str) -> Submission:
        sky = self._sdk()
        request_id = self._call("start", sky.start, cluster_name)
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    # --- resolving requests ---------------------------------------------------------

    def resolve_requests(self, request_ids):
        """One ``api_status`` call for every request in flight; ``get`` only for finished ones."""
        sky = self._sdk()
        ids = [str(r) for r in request_ids if r]
        if not ids:
            return {}
        payloads = self._call("api_status", sky.api_status, ids)
        if not payloads:
            # The SDK answers "nothing" when a local API server is not running;
            # start it (as any other call would) and ask again before calling requests lost.
            from sky.server import common as server_common

            self._call("api_health", server_common.check_server_healthy_or_start_fn)
            payloads = self._call("api_status", sky.api_status, ids)
        by_id = {p.request_id: p for p in payloads}
        results = {}
        fetched = 0
        for rid in ids:
            payload = by_id.get(rid) or next((p for p in payloads if p.request_id.startswith(rid)), None)
            if payload is None:
                results[rid] = RequestResult(
                    request_id=rid, done=True, ok=False, reason="RequestLost", retryable=True,
                    message="The SkyPilot API server no longer knows this request (was it restarted with a fresh state?).",
                )
                continue
            if payload.status in REQUEST_ACTIVE or fetched >= MAX_RESULTS_PER_POLL:
                results[rid] = RequestResult(request_id=rid, done=False)
                continue
            fetched += 1
            results[rid] = self._finished(rid, payload)
        return results

    def _finished(self, rid, payload):
        sky = self._sdk()
        name = payload.name or ""
        cluster = payload.cluster_name or ""
        try:
            value = self._call("get", sky.get, rid)
        except BackendUnreachable:
            raise
        except BackendError as exc:
            reason, message = exc.reason, exc.message
            if isinstance(exc, ClusterGone) and name.endswith("down"):
                # Torn down already (by an earlier request, or by hand): what was asked is true.
                return RequestResult(request_id=rid, done=True, ok=True, cluster_name=cluster)
            if isinstance(exc, NotSupported) and name.endswith("stop"):
                # Stop is not offered on this infra (e.g. Slurm): the reconciler keeps
                # the cluster up and tells the user to set TERMINATED instead.
                reason = "StopNotSupported"
                message = f"{message} The cluster stays up; set TERMINATED to release it."
            return RequestResult(request_id=rid, done=True, ok=False, cluster_name=cluster,
                                 reason=reason, message=message, retryable=exc.retryable)
        job_id = None
        if isinstance(value, (tuple, list)) and value:
            first = value[0]
            if isinstance(first, (list, tuple)):  # managed jobs: a list of job ids
                first = first[0] if first else None
            job_id = int(first) if isinstance(first, int) else None
        if name.endswith(("launch", "exec")) and job_id is None and "jobs" not in name:
            return RequestResult(request_id=rid, done=True, ok=False, cluster_name=cluster,
                                 reason="NoJobSubmitted", retryable=True,
                                 message="SkyPilot finished the launch but submitted no job.")
        return RequestResult(request_id=rid, done=True, ok=True, job_id=job_id, cluster_name=cluster,
                             log_path=self.log_cache_path(cluster, job_id) if job_id is not None and cluster else "")

    # --- what runs ------------------------------------------------------------------

    def list_clusters(self):
        sky = self._sdk()
        from sky.utils.common import StatusRefreshMode

        records = self._result("status", sky.status, refresh=StatusRefreshMode.AUTO)
        costs = self._cost_report()
        clusters = []
        for rec in records:
            name = _get(rec, "name")
            status_name = _name(_get(rec, "status")).upper()
            cloud = (_get(rec, "cloud") or "").lower()
            region = _get(rec, "region") or ""
            autostop = _get(rec, "autostop")
            message = ""
            if status_name == "INIT":
                message = clean(_get(rec, "init_status_reason") or _get(rec, "last_event") or "")
            elif status_name == "AUTOSTOPPING":
                message = "Autostopping."
            cost = costs.get(name, {})
            clusters.append(
                ClusterInfo(
                    name=name,
                    status=map_cluster_status(status_name),
                    resources=_get(rec, "resources_str_full") or _get(rec, "resources_str") or "",
                    num_nodes=_get(rec, "nodes") or 1,
                    infra="/".join(p for p in (cloud, region) if p),
                    launched_at=_ts(_get(rec, "launched_at")),
                    autostop=autostop if isinstance(autostop, int) and autostop >= 0 else None,
                    hourly_cost=cost.get("hourly"),
                    total_cost=cost.get("total"),
                    message=message,
                )
            )
        self._hourly_cost = {name: c["hourly"] for name, c in costs.items() if c.get("hourly") is not None}
        return clusters

    def _cost_report(self):
        """name -> {"hourly", "total"} from SkyPilot's cost report, where it knows them."""
        sky = self._sdk()
        try:
            report = self._result("cost_report", sky.cost_report)
        except BackendUnreachable:
            raise
        except BackendError as exc:
            logger.info("cost report unavailable: %s", exc.message)
            return {}
        costs = {}
        for rec in report or []:
            name = _get(rec, "name")
            total = _get(rec, "total_cost")
            duration = _get(rec, "duration") or 0
            if name is None or total is None:
                continue
            # The report keeps downed clusters too; the newest launch wins.
            hourly = float(total) * 3600.0 / duration if duration else None
            costs[name] = {"total": float(total), "hourly": hourly}
        return costs

    def list_jobs(self, cluster_name):
        sky = self._sdk()
        records = self._result("queue", sky.queue, cluster_name, all_users=True)
        hourly = self._hourly_cost.get(cluster_name)
        jobs = []
        for rec in records:
            job_id = _get(rec, "job_id")
            status = map_job_status(_get(rec, "status"))
            started, ended = _ts(_get(rec, "start_at")), _ts(_get(rec, "end_at"))
            cost = None
            if hourly is not None and started:
                cost = round(hourly * ((ended or datetime.now(UTC)) - started).total_seconds() / 3600.0, 6)
            jobs.append(
                JobInfo(
                    cluster_name=cluster_name,
                    job_id=int(job_id),
                    name=_get(rec, "job_name") or "",
                    status=status,
                    exit_code=0 if status == "SUCCEEDED" else None,
                    submitted_at=_ts(_get(rec, "submitted_at")),
                    started_at=started,
                    ended_at=ended,
                    log_path=self.log_cache_path(cluster_name, job_id),
                    cost=cost,
                )
            )
        return jobs

    def list_managed_jobs(self):
        """SkyPilot's managed jobs queue, one call; SkyDeck keeps their job ids."""
        sky = self._sdk()
        value = self._result("jobs.queue", sky.jobs.queue_v2, refresh=False, skip_finished=False)
        records = value[0] if isinstance(value, tuple) else value
        jobs = []
        for rec in records or []:
            status_name = _name(_get(rec, "status")).upper()
            recoveries = _get(rec, "recovery_count") or 0
            message = clean(_get(rec, "failure_reason") or "")
            if recoveries:
                message = (message + " " if message else "") + f"SkyPilot recovered it {recoveries} time(s)."
            jobs.append(
                JobInfo(
                    cluster_name="",
                    job_id=int(_get(rec, "job_id")),
                    name=_get(rec, "job_name") or "",
                    status=map_managed_job_status(status_name),
                    submitted_at=_ts(_get(rec, "submitted_at")),
                    started_at=_ts(_get(rec, "start_at")),
                    ended_at=_ts(_get(rec, "end_at")),
                    message=message,
                )
            )
        return jobs

    # --- actions --------------------------------------------------------------------

    def cancel(self, cluster_name, job_id, *, request_id=""):
        sky = self._sdk()
        if request_id:
            # A launch still in flight: abort it (a finished one ignores this).
            self._call("api_cancel", sky.api_cancel, [request_id], silent=True)
        if not cluster_name:  # a managed job
            if job_id is not None:
                self._result("jobs.cancel", sky.jobs.cancel, job_ids=[int(job_id)])
            return
        try:
            if job_id is not None:
                self._result("cancel", sky.cancel, cluster_name, job_ids=[int(job_id)])
            elif request_id:
                # The launch may have submitted its job already; the cluster is
                # this experiment's alone, so cancelling all of its jobs is safe.
                self._result("cancel", sky.cancel, cluster_name, all=True)
        except ClusterGone:
            return  # nothing left to cancel
        except BackendError as exc:
            if exc.reason == "ClusterNotUp" and job_id is None:
                return  # the launch never got as far as a cluster
            raise

    def stop(self, cluster_name):
        sky = self._sdk()
        request_id = self._call("stop", sky.stop, cluster_name)
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    def down(self, cluster_name):
        sky = self._sdk()
        self._archive_logs(cluster_name)
        try:
            request_id = self._call("down", sky.down, cluster_name)
        except ClusterGone:
            return None
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    # --- logs ------------------------------------------------------------------------

    def _archive_logs(self, cluster_name, limit=20):
        """Before a teardown, copy the output SkyDeck has not kept yet: the history outlives the cluster."""
        try:
            jobs = self.list_jobs(cluster_name)
        except BackendUnreachable:
            raise
        except BackendError:
            return  # gone or not up: nothing left to read
        for job in sorted(jobs, key=lambda j: j.job_id)[-limit:]:
            if job.log_path and not Path(job.log_path).exists():
                try:
                    self.read_log(cluster_name, job.job_id, job.log_path, 0)
                except BackendUnreachable:
                    raise
                except BackendError as exc:
                    logger.info("could not keep the log of job %s on %s: %s", job.job_id, cluster_name, exc.message)

    @staticmethod
    def log_cache_path(cluster_name, job_id):
        """Where SkyDeck keeps a copy of a job's output, so it outlives the cluster."""
        if job_id is None:
            return ""
        folder = cluster_name or "managed"
        return str(Path(settings.VAR_DIR) / "skypilot-logs" / folder / f"{int(job_id)}.log")

    def read_log(self, cluster_name, job_id, log_path, offset):
        """The job's output from ``offset`` (bytes), read without following.

        Each read fetches the log as it is now (``tail_logs(follow=False)``
        returns at once, holding no API-server worker), keeps a copy at
        ``log_path`` and returns the part after ``offset``. When the cluster is
        gone, the copy is what remains.
        """
        sky = self._sdk()
        path = Path(log_path) if log_path else (Path(self.log_cache_path(cluster_name, job_id)) if job_id is not None else None)
        text, complete = None, True
        if job_id is not None:
            buf = io.StringIO()
            try:
                if cluster_name:
                    rc = self._call("tail_logs", sky.tail_logs, cluster_name, int(job_id), follow=False, output_stream=buf)
                else:
                    rc = self._call("jobs.tail_logs", sky.jobs.tail_logs, job_id=int(job_id), follow=False, output_stream=buf)
                text = clean_log(buf.getvalue())
                complete = rc is not None and rc != 101  # 101: JobExitCode.NOT_FINISHED
            except ClusterGone:
                text = None  # the copy is all there is now
            except BackendUnreachable:
                if path is None or not path.exists():
                    raise  # nothing to show: say why
                text, complete = None, False  # show the copy, and keep asking
            except BackendError as exc:
                if exc.reason not in ("ClusterNotUp", "CommandFailed", "SkyletError"):
                    raise
                text = None
        data = b""
        if text is not None:
            data = text.encode()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        elif path is not None and path.exists():
            data = path.read_bytes()
        chunk = data[max(0, offset):max(0, offset) + MAX_LOG_CHUNK]
        new_offset = max(0, offset) + len(chunk)
        return LogChunk(
            text=chunk.decode("utf-8", errors="replace"),
            offset=new_offset,
            complete=complete and new_offset >= len(data),
        )


def clean_log(text):
    """A job log as a person reads it: no colour codes, no carriage-return spinners."""
    lines = []
    for line in ANSI_RE.sub("", text).split("\n"):
        lines.append(line.rsplit("\r", 1)[-1])
    return "\n".join(lines)
