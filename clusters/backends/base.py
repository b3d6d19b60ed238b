"""The protocol between SkyDeck's control loop and a compute backend.

A backend reports what runs and carries out single actions. It decides
nothing: the reconciler (in ``experiments``) chooses the action, the backend
performs it and answers with plain data or a ``BackendError`` whose
``reason`` says what went wrong in a word the dashboard can show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to run one job of an experiment."""

    job_name: str  # sd-<experiment>-<attempt>: also the idempotency key
    cluster_name: str  # sd-<experiment>
    command: str  # the full command line, flags already quoted
    setup: str = ""
    envs: dict = field(default_factory=dict)
    workdir: str = ""
    accelerators: str = ""
    num_nodes: int = 1
    cpus: str = ""
    memory: str = ""
    infra: str = ""
    use_spot: bool = False
    disk_size: int | None = None
    image_id: str = ""
    # Stop (or, where the infra cannot stop, tear down) the cluster after this many idle minutes; None keeps it up.
    autostop_minutes: int | None = None
    managed: bool = False
    # Where the job's output is kept on this machine; SkyDeck chooses it, the job cannot.
    log_path: str = ""

    @property
    def autostop_down(self):
        """Whether idleness tears the cluster down: infra that cannot stop a cluster (Slurm, Kubernetes)."""
        return infra_cannot_stop(self.infra)

    def resources(self) -> dict:
        return {
            "accelerators": self.accelerators,
            "num_nodes": self.num_nodes,
            "cpus": self.cpus,
            "memory": self.memory,
            "infra": self.infra,
            "use_spot": self.use_spot,
            "disk_size": self.disk_size,
            "image_id": self.image_id,
            "autostop_minutes": self.autostop_minutes,
            "managed": self.managed,
        }


# Infra where SkyPilot cannot stop a cluster (only tear it down): Slurm, Kubernetes, SSH node pools.
NO_STOP_INFRA = ("slurm", "k8s", "kubernetes", "ssh")


def infra_cannot_stop(infra):
    return (infra or "").strip().lower().split("/", 1)[0] in NO_STOP_INFRA


@dataclass
class Submission:
    """What a launch/exec/start submission returned.

    A backend that answers at once (local) fills ``job_id`` and ``status``;
    one that queues the work (SkyPilot) returns a ``request_id`` that the
    poller resolves later with ``resolve_requests``.
    """

    request_id: str = ""
    job_id: int | None = None
    status: str = "LAUNCHING"
    submitted_at: datetime | None = None
    log_path: str = ""  # where the output goes, as the spec said (or as chosen when it said nothing)


@dataclass
class RequestResult:
    """The outcome of a submitted request, as ``resolve_requests`` sees it."""

    request_id: str
    done: bool
    ok: bool = False
    job_id: int | None = None
    cluster_name: str = ""
    reason: str = ""  # CamelCase reason when not ok
    message: str = ""
    retryable: bool = True


@dataclass
class ClusterInfo:
    name: str
    status: str  # INIT | UP | STOPPED
    resources: str = ""
    num_nodes: int = 1
    infra: str = ""
    launched_at: datetime | None = None
    autostop: int | None = None
    hourly_cost: float | None = None
    total_cost: float | None = None
    message: str = ""


@dataclass
class JobInfo:
    cluster_name: str
    job_id: int
    name: str
    status: str  # one of SkyDeck's job status names
    exit_code: int | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    message: str = ""
    cost: float | None = None
    exit_codes: list | None = None  # one per node, where the backend records them


@dataclass
class LogSync:
    """What one refresh of a job's log copy brought."""

    added: int = 0  # bytes appended to the copy
    fetched: int = 0  # bytes the backend sent for it
    finished: bool = False  # the backend says the job has ended and its whole output is in the copy
    exit_codes: list | None = None  # one per node, when the output says them


class BackendError(Exception):
    """An expected failure: an outcome with a reason, not a crash."""

    reason = "BackendError"
    retryable = True

    def __init__(self, message: str, *, reason: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if retryable is not None:
            self.retryable = retryable


class BackendUnreachable(BackendError):
    """The backend did not answer; nothing is known, so nothing may change."""

    reason = "BackendUnreachable"


class InvalidSpec(BackendError):
    """The experiment cannot be launched as written; retrying will not help."""

    reason = "InvalidSpec"
    retryable = False


class NotSupported(BackendError):
    """The backend cannot do this action on this cluster (e.g. stop on Slurm)."""

    reason = "NotSupported"
    retryable = False


class ClusterGone(BackendError):
    """The cluster does not exist (any more)."""

    reason = "ClusterGone"


@runtime_checkable
class ComputeBackend(Protocol):
    name: str

    def validate(self, spec: LaunchSpec) -> None:
        """Raise InvalidSpec if the spec can never launch."""

    def launch(self, spec: LaunchSpec) -> Submission:
        """Provision the cluster if needed and submit the job."""

    def exec(self, spec: LaunchSpec) -> Submission:
        """Submit the job on a cluster that is already UP."""

    def start(self, cluster_name: str) -> Submission:
        """Start a STOPPED cluster (its disk kept)."""

    def resolve_requests(self, request_ids: list[str]) -> dict[str, RequestResult]:
        """One call for all requests in flight."""

    def list_clusters(self) -> list[ClusterInfo]:
        """Every cluster the backend can see, SkyDeck's or not."""

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        """The job queue of one cluster."""

    def cancel(self, cluster_name: str, job_id: int | None, *, request_id: str = "") -> None:
        """Cancel one job (or a launch request still in flight)."""

    def stop(self, cluster_name: str) -> None:
        """Stop the cluster, keeping its disk."""

    def down(self, cluster_name: str) -> None:
        """Tear the cluster down."""

    def sync_log(self, cluster_name: str, job_id: int, log_path: str) -> LogSync:
        """Bring the copy of a job's output at ``log_path`` up to date, fetching only what is new.

        Backends whose jobs write their output to ``log_path`` themselves (local) need not have it.
        """
