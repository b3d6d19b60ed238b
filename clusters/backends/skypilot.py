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

import fcntl
import io
import logging
import os
import re
import threading
import time
import urllib.request
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
    LogSync,
    NotSupported,
    RequestResult,
    Submission,
)

logger = logging.getLogger(__name__)

# At most this many finished requests are fetched (one ``sky.get`` each) per
# poll; the rest wait for the next poll, so a poll's calls stay bounded.
MAX_RESULTS_PER_POLL = 20
# A log refresh asks for the last lines of the job's output and keeps what is new
# after the copy's last lines; it asks for more when that is not enough.
MIN_TAIL_LINES = 50
MAX_TAIL_TRIES = 4
ANCHOR_LINES = 8
# A local API server's health is asked by SkyDeck at most this often, with this much patience.
SERVER_CHECK_SECONDS = 10.0
SERVER_PATIENCE_SECONDS = 15.0
# How long the enabled clouds of a server are remembered before asking again.
CHECK_TTL_SECONDS = 600

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
            message = f"No enabled infra offers these resources: {message} Check infra, accelerators, cpus and memory."
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
        self._lock = threading.Lock()
        self._waiting = set()  # request ids a thread is waiting on (cancelled if the poll gives up)
        self._tail_lines = {}  # (cluster, job id) -> how many lines to ask for next time
        self._enabled = {}  # server URL -> (checked at, enabled infra names)
        self._server_seen_at = -SERVER_CHECK_SECONDS  # when a local server last answered our own health check

    # --- plumbing -------------------------------------------------------------

    @staticmethod
    def _sdk():
        os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        import sky

        return sky

    def _local_server_answers(self):
        """Ask a local API server's health ourselves before the SDK does.

        The SDK starts a local server when its own short health check gets no answer:
        that server would be the worker's child, die with it, and hide an outage. So
        SkyDeck asks first, with patience (a busy server may take seconds to answer),
        and says "unreachable" instead of calling the SDK when nothing answers. A remote
        server is the SDK's to reach; it never starts one.
        """
        from sky.server import common as server_common

        if not server_common.is_api_server_local():
            return
        now = time.monotonic()
        if now - self._server_seen_at < SERVER_CHECK_SECONDS:
            return
        url = server_common.get_server_url()
        busy = False
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=SERVER_PATIENCE_SECONDS) as response:
                healthy = response.status == 200
        except OSError as exc:
            healthy = False
            busy = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
        if busy:
            # Something listens but does not answer in time: say so, rather than "no server".
            raise BackendUnreachable(
                f"The SkyPilot API server at {url} did not answer its health check within "
                f"{SERVER_PATIENCE_SECONDS:g} s (too busy?); SkyDeck asks again at the next poll.",
                reason="BackendUnreachable",
            )
        if not healthy:
            raise BackendUnreachable(
                f"No SkyPilot API server answers at {url}. SkyDeck does not start one itself: `make run` starts it "
                "as its own service, or run `sky api start`, or set SKYPILOT_API_SERVER_ENDPOINT.",
                reason="BackendUnreachable",
            )
        self._server_seen_at = now

    def _call(self, name, fn, *args, **kwargs):
        """One SDK call, counted, with its exception mapped to an outcome."""
        self._local_server_answers()
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
        with self._lock:
            self._waiting.add(request_id)
        try:
            return self._call("get", sky.get, request_id)
        finally:
            with self._lock:
                self._waiting.discard(request_id)

    def abandon_requests(self):
        """Cancel on the server every request a thread still waits on: its thread then ends, and no worker is held."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), set()
        if not waiting:
            return
        sky = self._sdk()

        def cancel():
            try:
                self._call("api_cancel", sky.api_cancel, waiting, silent=True)
            except BackendError as exc:
                logger.info("could not cancel %d abandoned requests: %s", len(waiting), exc.message)

        # In the background: a server slow enough to need this must not hold the poll up further.
        threading.Thread(target=cancel, daemon=True, name="abandon").start()

    def total_calls(self):
        return sum(self.calls.values())

    def server(self):
        """Which API server this process talks to: its URL, and whether it is one on this machine."""
        from sky.server import common as server_common

        return {"url": server_common.get_server_url(), "local": server_common.is_api_server_local()}

    def describe(self):
        """Which server, and what it can launch on as far as known (no call is made for it)."""
        server = self.server()
        cached = self._enabled.get(server["url"])
        return {**server, **({"enabled_infra": sorted(cached[1])} if cached else {})}

    # --- launching --------------------------------------------------------------

    def validate(self, spec: LaunchSpec) -> None:
        build_task(spec)

    def enabled_infra(self):
        """The infra the server can launch on (``sky check``), asked once per server and remembered a while."""
        from sky.client import sdk

        url = self.server()["url"]
        cached = self._enabled.get(url)
        if cached and time.monotonic() - cached[0] < CHECK_TTL_SECONDS:
            return cached[1]
        enabled = {str(c).lower() for c in self._result("enabled_clouds", sdk.enabled_clouds) or []}
        self._enabled[url] = (time.monotonic(), enabled)
        return enabled

    def _check_enabled(self, spec):
        """Fail in a second, not minutes, when the server has no cloud for this spec."""
        enabled = self.enabled_infra()
        wanted = (spec.infra or "").strip().lower().split("/", 1)[0]
        if wanted in ("kubernetes",):
            wanted = "kubernetes"
        if not enabled:
            raise BackendError(
                f"No cloud is enabled on the SkyPilot API server: {SKY_CHECK_HINT}.",
                reason="NoCloudAccess",
                retryable=False,
            )
        aliases = {"k8s": "kubernetes"}
        if wanted and aliases.get(wanted, wanted) not in enabled:
            raise BackendError(
                f"{wanted} is not enabled on the SkyPilot API server (enabled: {', '.join(sorted(enabled))}): "
                f"{SKY_CHECK_HINT}.",
                reason="NoCloudAccess",
                retryable=False,
            )

    def launch(self, spec: LaunchSpec) -> Submission:
        sky = self._sdk()
        task = build_task(spec)
        self._check_enabled(spec)
        self._validate_on_server(task)
        if spec.managed:
            request_id = self._call("jobs.launch", sky.jobs.launch, task, name=spec.job_name)
        else:
            # SkyPilot's own autostop: the cluster stops (or goes) when idle even if SkyDeck is down.
            autostop = spec.autostop_minutes if settings.SKYDECK_SKYPILOT_AUTOSTOP else None
            request_id = self._call(
                "launch",
                sky.launch,
                task,
                cluster_name=spec.cluster_name,
                idle_minutes_to_autostop=autostop,
                down=spec.autostop_down if autostop is not None else False,
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

    def find_submission(self, spec: LaunchSpec, since: datetime):
        """A job or a launch request named ``spec.job_name`` that SkyPilot already has, or None.

        Asked before any resubmission: a worker killed after SkyPilot registered the
        launch but before SkyDeck saved the request id must not lead to a second job.
        """
        sky = self._sdk()
        if not spec.managed:
            try:
                for job in self.list_jobs(spec.cluster_name):
                    if job.name == spec.job_name:
                        return Submission(job_id=job.job_id, status=job.status, submitted_at=job.submitted_at)
            except BackendUnreachable:
                raise
            except BackendError:
                pass  # no cluster (yet), or not up: the requests tell
        payloads = self._call(
            "api_status", sky.api_status, None, all_status=True, cluster_name=spec.cluster_name or None, limit=100
        )
        earliest = since.timestamp() - 60
        for payload in sorted(payloads or [], key=lambda p: p.created_at, reverse=True):
            name = payload.name or ""
            if not name.endswith(("launch", "exec")) or (payload.created_at or 0) < earliest:
                continue
            if spec.job_name in (payload.request_body or "") and payload.status not in ("FAILED", "CANCELLED"):
                return Submission(request_id=payload.request_id, submitted_at=_ts(payload.created_at))
        return None

    # --- resolving requests ---------------------------------------------------------

    def resolve_requests(self, request_ids):
        """One ``api_status`` call for every request in flight; ``get`` only for finished ones."""
        sky = self._sdk()
        ids = [str(r) for r in request_ids if r]
        if not ids:
            return {}
        payloads = self._call("api_status", sky.api_status, ids)
        by_id = {p.request_id: p for p in payloads}
        results = {}
        fetched = 0
        for rid in ids:
            payload = by_id.get(rid) or next((p for p in payloads if p.request_id.startswith(rid)), None)
            if payload is None:
                results[rid] = RequestResult(
                    request_id=rid,
                    done=True,
                    ok=False,
                    reason="RequestLost",
                    retryable=True,
                    message="The SkyPilot API server no longer knows this request (was it restarted?).",
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
            return RequestResult(
                request_id=rid,
                done=True,
                ok=False,
                cluster_name=cluster,
                reason=reason,
                message=message,
                retryable=exc.retryable,
            )
        job_id = None
        if isinstance(value, (tuple, list)) and value:
            first = value[0]
            if isinstance(first, (list, tuple)):  # managed jobs: a list of job ids
                first = first[0] if first else None
            job_id = int(first) if isinstance(first, int) else None
        if name.endswith(("launch", "exec")) and job_id is None and "jobs" not in name:
            return RequestResult(
                request_id=rid,
                done=True,
                ok=False,
                cluster_name=cluster,
                reason="NoJobSubmitted",
                retryable=True,
                message="SkyPilot finished the launch but submitted no job.",
            )
        return RequestResult(request_id=rid, done=True, ok=True, job_id=job_id, cluster_name=cluster)

    # --- what runs ------------------------------------------------------------------

    def list_clusters(self):
        """``status`` and ``cost_report`` submitted together, then collected."""
        sky = self._sdk()
        from sky.utils.common import StatusRefreshMode

        # From the server's cache (its own daemon refreshes it every minute): a short request,
        # never queued behind launches the way a refreshing status is.
        status_id = self._call("status", sky.status, refresh=StatusRefreshMode.NONE)
        cost_id = self._call("cost_report", sky.cost_report)
        records = self._call("get", sky.get, status_id)
        costs = self._costs(cost_id)
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
        return clusters

    def _costs(self, cost_id):
        """name -> {"hourly", "total"} from SkyPilot's cost report, where it knows them."""
        sky = self._sdk()
        try:
            report = self._call("get", sky.get, cost_id)
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
        jobs = []
        for rec in records:
            status = map_job_status(_get(rec, "status"))
            codes = _get(rec, "exit_codes")
            jobs.append(
                JobInfo(
                    cluster_name=cluster_name,
                    job_id=int(_get(rec, "job_id")),
                    name=_get(rec, "job_name") or "",
                    status=status,
                    exit_code=0 if status == "SUCCEEDED" else None,
                    exit_codes=list(codes) if codes else None,
                    submitted_at=_ts(_get(rec, "submitted_at")),
                    started_at=_ts(_get(rec, "start_at")),
                    ended_at=_ts(_get(rec, "end_at")),
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
        try:
            request_id = self._call("down", sky.down, cluster_name)
        except ClusterGone:
            return None
        return Submission(request_id=str(request_id), submitted_at=datetime.now(UTC))

    # --- logs ------------------------------------------------------------------------

    def _fetch_log(self, cluster_name, job_id, tail):
        sky = self._sdk()
        buf = io.StringIO()
        if cluster_name:
            self._call(
                "tail_logs", sky.tail_logs, cluster_name, int(job_id), follow=False, tail=tail, output_stream=buf
            )
        else:
            self._call("jobs.tail_logs", sky.jobs.tail_logs, job_id=int(job_id), follow=False, output_stream=buf)
        return buf.getvalue()

    def sync_log(self, cluster_name, job_id, log_path):
        """Append to the copy at ``log_path`` what the job printed since the last refresh.

        SkyPilot reads a job's output by lines from its end (``tail_logs(tail=N)``),
        not by byte offset: ask for the last N lines, find the copy's last lines in
        them, and keep what comes after. N follows how much the job printed last
        time, so each refresh transfers about what is new; when the copy's end is
        not among them, ask again for more. The first refresh of a copy takes the
        whole output so far. The copy is locked while it is written, so two
        refreshes never append the same lines.
        """
        path = Path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = (cluster_name, int(job_id))
        with open(path, "a+b") as copy:
            try:
                fcntl.flock(copy.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return LogSync()  # another refresh of this copy is under way: it brings the same lines
            copy.seek(0, os.SEEK_END)
            size = copy.tell()
            anchor = _last_lines(copy, size, ANCHOR_LINES) if size else []
            tail = 0 if not anchor else self._tail_lines.get(key, MIN_TAIL_LINES * 4)
            fetched = 0
            for attempt in range(MAX_TAIL_TRIES + 1):
                text = self._fetch_log(cluster_name, job_id, tail)
                fetched += len(text.encode())
                lines, finished = _split_footer(text.splitlines(keepends=True))
                new = _after(anchor, lines)
                if new is not None or tail == 0:
                    break
                tail = 0 if attempt == MAX_TAIL_TRIES - 1 else tail * 4
            if new is None:  # even the whole output does not hold the copy's end: start the copy afresh
                copy.truncate(0)
                new = lines
            if new and not new[-1].endswith("\n"):
                if finished:
                    new[-1] += "\n"
                else:
                    new = new[:-1]  # a line still being written: read again whole next time
            data = "".join(new) + finished
            copy.write(data.encode())
            copy.flush()
            os.utime(path)  # the copy's time says when it was last refreshed, new output or not
            if finished:
                self._tail_lines.pop(key, None)
            else:
                self._tail_lines[key] = max(MIN_TAIL_LINES, 2 * len(new))
        return LogSync(
            added=len(data.encode()),
            fetched=fetched,
            finished=bool(finished),
            exit_codes=exit_codes_in(data) if finished else None,
        )

    @staticmethod
    def finished_status(log_path):
        """The status in SkyPilot's "Job finished (status: ...)" line at the end of a copy, or None."""
        try:
            with open(log_path, "rb") as copy:
                size = copy.seek(0, os.SEEK_END)
                lines = _last_lines(copy, size, ANCHOR_LINES)
        except OSError:
            return None
        for line in reversed(lines):
            found = FINISHED_RE.match(_plain(line))
            if found:
                return map_job_status(found.group(1))
        return None

    @staticmethod
    def log_cache_path(cluster_name, job_id):
        """Where SkyDeck kept copies of SkyPilot job output before the copy was named by SkyDeck's job."""
        if job_id is None:
            return ""
        folder = cluster_name or "managed"
        return str(Path(settings.VAR_DIR) / "skypilot-logs" / folder / f"{int(job_id)}.log")


# --- reading SkyPilot's log output --------------------------------------------------

# The lines SkyPilot's log command adds after a job's own output: its "finished" line, and
# the exit of the log command itself under Slurm (JobExitCode 100-103).
FINISHED_RE = re.compile(r"^\s*✓?\s*Job finished \(status: ([A-Z_]+)\)\.\s*$")
TAIL_EXIT_RE = re.compile(r"^srun: error: .*: task \d+: Exited with exit code 10[0-3]\s*$")
WAITING_RE = re.compile(r"^INFO: Waiting \d+s for the logs to be written")
RETURN_CODES_RE = re.compile(r"failed with return code list:\s*(?:\x1b\[[0-9;]*m)?\s*\[([0-9,\s-]+)\]")
SETUP_RETURN_CODE_RE = re.compile(r"setup failed with return code (-?\d+)")


def _plain(line):
    return ANSI_RE.sub("", line).rstrip("\r\n")


def _split_footer(lines):
    """(the job's output lines, SkyPilot's "Job finished" line or "") of one log fetch."""
    finished = ""
    while lines:
        plain = _plain(lines[-1])
        if TAIL_EXIT_RE.match(plain) or not plain.strip():
            lines = lines[:-1]
        elif FINISHED_RE.match(plain):
            finished = lines[-1] if lines[-1].endswith("\n") else lines[-1] + "\n"
            lines = lines[:-1]
        else:
            break
    return [line for line in lines if not WAITING_RE.match(_plain(line))], finished


def _after(anchor, lines):
    """The lines after the last place ``anchor`` (the copy's last lines) ends in ``lines``; None if not found."""
    if not anchor:
        return list(lines)
    n = len(anchor)
    for end in range(len(lines), n - 1, -1):
        if lines[end - n : end] == anchor:
            return list(lines[end:])
    return None


def _last_lines(fh, size, count, block=64 * 1024):
    """The last ``count`` lines of the open copy."""
    fh.seek(max(0, size - block))
    lines = fh.read().decode("utf-8", errors="replace").splitlines(keepends=True)
    if size > block:
        lines = lines[1:]  # the first may be cut
    return lines[-count:]


def exit_codes_in(text):
    """The per-node exit codes SkyPilot printed for a failed job (``return code list: [3, 0]``), or None."""
    matches = list(RETURN_CODES_RE.finditer(text))
    if matches:
        return [int(x) for x in matches[-1].group(1).replace(" ", "").split(",") if x]
    setup = SETUP_RETURN_CODE_RE.search(ANSI_RE.sub("", text))
    return [int(setup.group(1))] if setup else None


def clean_log(text):
    """A job log as a person reads it: no colour codes, no carriage-return spinners."""
    lines = []
    for line in ANSI_RE.sub("", text).split("\n"):
        lines.append(line.rsplit("\r", 1)[-1])
    return "\n".join(lines)
