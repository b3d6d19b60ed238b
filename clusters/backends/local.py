"""The local backend: a job is a real process on this machine.

A "cluster" is a directory under ``SKYDECK_LOCAL_ROOT``; each job gets a
numbered folder inside it holding its script, its output log, its process
group id and, once it ends, its exit code. Everything lives on disk, so a
worker restart loses nothing, and jobs are started detached in their own
session so they outlive the worker that launched them.

Layout::

    <root>/<cluster>/cluster.json        {"status": "UP" | "STOPPED", "launched_at": ...}
    <root>/<cluster>/jobs/<id>/meta.json {"name", "submitted_at", "pgid"}: written before the job starts
    <root>/<cluster>/jobs/<id>/pgid       the job's process group, written by run.sh as it starts
    <root>/<cluster>/jobs/<id>/run.sh     the setup and command, as written
    <root>/<cluster>/jobs/<id>/phase      SETTING_UP | RUNNING (written by run.sh)
    <root>/<cluster>/jobs/<id>/exit_code  written by run.sh when the command ends
    <root>/<cluster>/jobs/<id>/cancelled  written by SkyDeck before it kills the job

The job's output goes to the log file SkyDeck names in the spec (outside the
cluster directory, so it outlives ``down``); nothing a job writes tells
SkyDeck where to read it.

The job starts with a clean environment: its experiment's variables, a short
allow-list from the service (``PASSED_ENV``) and SkyDeck's job variables, never
the service's own settings (database URL, secret key, tokens).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from .base import ClusterGone, ClusterInfo, InvalidSpec, JobInfo, LaunchSpec, RequestResult, Submission

KILL_GRACE_SECONDS = 3.0
# What a job inherits from the service's environment; everything else is the experiment's own.
PASSED_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR", "TERM")
PASSED_ENV_PREFIXES = ("LC_",)

# run.sh: records its process group first, then setup, then the command; the phase and exit code on disk.
RUN_SCRIPT = """#!/bin/bash
echo $$ > "$SKYDECK_JOB_DIR/pgid.tmp" && mv "$SKYDECK_JOB_DIR/pgid.tmp" "$SKYDECK_JOB_DIR/pgid"
if ! cd "$SKYDECK_WORKDIR"; then
  echo "workdir $SKYDECK_WORKDIR is missing"
  echo SETUP > "$SKYDECK_JOB_DIR/failed_in"
  echo 1 > "$SKYDECK_JOB_DIR/exit_code.tmp" && mv "$SKYDECK_JOB_DIR/exit_code.tmp" "$SKYDECK_JOB_DIR/exit_code"
  exit 1
fi
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$SKYDECK_JOB_DIR/started_at"
echo SETTING_UP > "$SKYDECK_JOB_DIR/phase"
bash "$SKYDECK_JOB_DIR/setup.sh"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo SETUP > "$SKYDECK_JOB_DIR/failed_in"
else
  echo RUNNING > "$SKYDECK_JOB_DIR/phase"
  bash "$SKYDECK_JOB_DIR/command.sh"
  rc=$?
fi
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$SKYDECK_JOB_DIR/ended_at"
echo "$rc" > "$SKYDECK_JOB_DIR/exit_code.tmp"
mv "$SKYDECK_JOB_DIR/exit_code.tmp" "$SKYDECK_JOB_DIR/exit_code"
exit "$rc"
"""


def _now():
    return datetime.now(UTC)


def _read(path, default=""):
    try:
        return Path(path).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return default


def _parse_time(text):
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _write_json(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _group_alive(pgid):
    """True while the job's process group has a live member.

    ``killpg(pgid, 0)`` asks the kernel directly, one call a job. A leader that
    exited but is not reaped yet (a zombie) still answers, so its state is read
    from ``/proc`` (one file) when the group seems alive.
    """
    if not pgid:
        return False
    try:
        os.killpg(int(pgid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{int(pgid)}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True  # the leader is gone; other members still run
    return state != "Z"


def job_environment(spec, job_dir, workdir):
    """The environment a job starts with: nothing of the service's but an allow-list."""
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith(PASSED_ENV_PREFIXES)}
    env.update({str(k): str(v) for k, v in spec.envs.items()})
    env.update(
        SKYDECK_JOB_DIR=str(job_dir),
        SKYDECK_WORKDIR=str(workdir),
        SKYDECK_JOB_NAME=spec.job_name,
        SKYDECK_CLUSTER=spec.cluster_name,
        SKYPILOT_TASK_ID=spec.job_name,
        PYTHONUNBUFFERED="1",
    )
    return env


class LocalBackend:
    """Runs jobs as detached processes under a working directory per cluster."""

    name = "local"

    def __init__(self, root=None):
        self._root = Path(root) if root else None

    @property
    def root(self):
        root = self._root or Path(settings.SKYDECK_LOCAL_ROOT)
        root.mkdir(parents=True, exist_ok=True)
        return root

    # --- helpers ---------------------------------------------------------

    def _cluster_dir(self, cluster_name):
        if not cluster_name or "/" in cluster_name or cluster_name.startswith("."):
            raise InvalidSpec(f"Bad cluster name {cluster_name!r}")
        return self.root / cluster_name

    def _cluster_meta(self, cluster_dir):
        try:
            return json.loads((cluster_dir / "cluster.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _job_dirs(self, cluster_dir):
        jobs = cluster_dir / "jobs"
        if not jobs.is_dir():
            return []
        return sorted((p for p in jobs.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))

    def _job_status(self, job_dir, meta):
        exit_code = _read(job_dir / "exit_code")
        if not exit_code:
            if _group_alive(meta.get("pgid")):
                if (job_dir / "cancelled").exists():
                    return "CANCELLED", None
                phase = _read(job_dir / "phase")
                return (phase if phase in {"SETTING_UP", "RUNNING"} else "PENDING"), None
            # It may have ended between the two looks: read again now that it is gone.
            exit_code = _read(job_dir / "exit_code")
        if exit_code:
            code = int(exit_code)
            if (job_dir / "cancelled").exists() and code != 0:
                return "CANCELLED", code
            if code == 0:
                return "SUCCEEDED", 0
            return ("FAILED_SETUP" if _read(job_dir / "failed_in") == "SETUP" else "FAILED"), code
        if (job_dir / "cancelled").exists():
            return "CANCELLED", None
        # The process is gone without recording an exit code: killed from outside.
        return "FAILED_DRIVER", None

    # --- protocol ----------------------------------------------------------

    def validate(self, spec: LaunchSpec):
        if spec.num_nodes != 1:
            raise InvalidSpec("The local backend runs on one node: set num_nodes to 1.")
        if spec.workdir and not Path(spec.workdir).expanduser().is_dir():
            raise InvalidSpec(f"workdir {spec.workdir!r} does not exist on this machine.")
        if spec.managed:
            raise InvalidSpec("Managed jobs need the skypilot backend.")

    def launch(self, spec: LaunchSpec) -> Submission:
        self.validate(spec)
        cluster_dir = self._cluster_dir(spec.cluster_name)
        (cluster_dir / "jobs").mkdir(parents=True, exist_ok=True)
        meta = self._cluster_meta(cluster_dir) or {"launched_at": _now().isoformat()}
        meta.update(status="UP", resources="local process", infra="local", autostop=spec.autostop_minutes)
        _write_json(cluster_dir / "cluster.json", meta)
        return self._submit(cluster_dir, spec)

    def exec(self, spec: LaunchSpec) -> Submission:
        self.validate(spec)
        cluster_dir = self._cluster_dir(spec.cluster_name)
        meta = self._cluster_meta(cluster_dir)
        if meta is None:
            raise ClusterGone(f"Cluster {spec.cluster_name} does not exist.")
        if meta.get("status") != "UP":
            raise InvalidSpec(f"Cluster {spec.cluster_name} is {meta.get('status')}, not UP.", retryable=True)
        return self._submit(cluster_dir, spec)

    def start(self, cluster_name) -> Submission:
        cluster_dir = self._cluster_dir(cluster_name)
        meta = self._cluster_meta(cluster_dir)
        if meta is None:
            raise ClusterGone(f"Cluster {cluster_name} does not exist.")
        meta["status"] = "UP"
        _write_json(cluster_dir / "cluster.json", meta)
        return Submission(status="UP", submitted_at=_now())

    def _job_meta(self, job_dir):
        try:
            meta = json.loads((job_dir / "meta.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not meta.get("pgid"):
            # Started, but SkyDeck died before it wrote the group down: the job wrote it itself.
            pgid = _read(job_dir / "pgid")
            if pgid.isdigit():
                meta["pgid"] = int(pgid)
        return meta

    def find_submission(self, spec, since=None):
        """The job already submitted under ``spec.job_name``, if any."""
        cluster_dir = self._cluster_dir(spec.cluster_name)
        for job_dir in self._job_dirs(cluster_dir):
            meta = self._job_meta(job_dir)
            if meta is not None and meta.get("name") == spec.job_name:
                status, _ = self._job_status(job_dir, meta)
                return Submission(
                    job_id=int(job_dir.name), status=status, submitted_at=_parse_time(meta.get("submitted_at"))
                )
        return None

    def _submit(self, cluster_dir, spec):
        # Idempotent: a job with this name already submitted is returned, not run twice.
        existing = self.find_submission(spec)
        if existing is not None:
            return existing
        job_id, job_dir = self._allocate_job_dir(cluster_dir)
        workdir = Path(spec.workdir).expanduser() if spec.workdir else cluster_dir / "workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        (job_dir / "setup.sh").write_text(spec.setup or "true\n")
        (job_dir / "command.sh").write_text(spec.command + "\n")
        (job_dir / "run.sh").write_text(RUN_SCRIPT.format())
        # SkyDeck names the file; a job submitted without one (by hand, in a test) gets one here.
        log_path = Path(spec.log_path or self.root / ".logs" / f"{spec.job_name}-{int(time.time() * 1000)}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        submitted_at = _now()
        # The job's identity is on disk before its process exists: whatever happens next,
        # adoption, stop and down find it (the job records its process group itself).
        meta = {"name": spec.job_name, "submitted_at": submitted_at.isoformat()}
        _write_json(job_dir / "meta.json", meta)
        with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
            # A new session makes the job its own process group (cancel kills the
            # group) and detaches it from the worker, so it outlives the worker.
            proc = subprocess.Popen(
                ["/bin/bash", str(job_dir / "run.sh")],
                stdin=devnull,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(workdir),
                env=job_environment(spec, job_dir, workdir),
                start_new_session=True,
                close_fds=True,
            )
        _write_json(job_dir / "meta.json", {**meta, "pgid": proc.pid})
        # Submitted once listable: a poll that started before this moment may not see it.
        submitted_at = _now()
        _reap_later(proc, spec.job_name)
        return Submission(job_id=job_id, status="PENDING", submitted_at=submitted_at, log_path=str(log_path))

    def _allocate_job_dir(self, cluster_dir):
        jobs = cluster_dir / "jobs"
        existing = [int(p.name) for p in self._job_dirs(cluster_dir)]
        job_id = max(existing, default=0) + 1
        while True:
            job_dir = jobs / str(job_id)
            try:
                job_dir.mkdir()  # atomic: two submitters never share an id
                return job_id, job_dir
            except FileExistsError:
                job_id += 1

    def resolve_requests(self, request_ids):
        # Local submissions complete synchronously; there is never a request in flight.
        return {
            rid: RequestResult(
                request_id=rid,
                done=True,
                ok=False,
                reason="UnknownRequest",
                message="The local backend has no such request.",
                retryable=True,
            )
            for rid in request_ids
        }

    def list_clusters(self):
        clusters = []
        for cluster_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            meta = self._cluster_meta(cluster_dir)
            if meta is None:
                continue
            clusters.append(
                ClusterInfo(
                    name=cluster_dir.name,
                    status=meta.get("status", "UP"),
                    resources=meta.get("resources", "local process"),
                    num_nodes=1,
                    infra="local",
                    launched_at=_parse_time(meta.get("launched_at")),
                    autostop=meta.get("autostop"),
                    hourly_cost=0.0,
                )
            )
        return clusters

    def list_jobs(self, cluster_name):
        cluster_dir = self._cluster_dir(cluster_name)
        if self._cluster_meta(cluster_dir) is None:
            raise ClusterGone(f"Cluster {cluster_name} does not exist.")
        jobs = []
        for job_dir in self._job_dirs(cluster_dir):
            meta = self._job_meta(job_dir)
            if meta is None:
                continue  # being created right now
            status, exit_code = self._job_status(job_dir, meta)
            jobs.append(
                JobInfo(
                    cluster_name=cluster_name,
                    job_id=int(job_dir.name),
                    name=meta.get("name", ""),
                    status=status,
                    exit_code=exit_code,
                    submitted_at=_parse_time(meta.get("submitted_at")),
                    started_at=_parse_time(_read(job_dir / "started_at")),
                    ended_at=_parse_time(_read(job_dir / "ended_at")) or _parse_time(meta.get("cancelled_at")),
                    exit_codes=[exit_code] if exit_code is not None else None,
                    cost=0.0,
                )
            )
        return jobs

    def _kill_job(self, job_dir):
        meta = self._job_meta(job_dir)
        if meta is None:
            return
        if _read(job_dir / "exit_code"):
            return  # already ended
        (job_dir / "cancelled").write_text(_now().isoformat())
        meta["cancelled_at"] = _now().isoformat()
        _write_json(job_dir / "meta.json", meta)
        pgid = meta.get("pgid")
        if not _group_alive(pgid):
            return
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def cancel(self, cluster_name, job_id, *, request_id=""):
        cluster_dir = self._cluster_dir(cluster_name)
        if job_id is None:
            return
        job_dir = cluster_dir / "jobs" / str(int(job_id))
        if job_dir.is_dir():
            self._kill_job(job_dir)

    def stop(self, cluster_name):
        cluster_dir = self._cluster_dir(cluster_name)
        meta = self._cluster_meta(cluster_dir)
        if meta is None:
            raise ClusterGone(f"Cluster {cluster_name} does not exist.")
        for job_dir in self._job_dirs(cluster_dir):
            self._kill_job(job_dir)
        meta["status"] = "STOPPED"
        _write_json(cluster_dir / "cluster.json", meta)

    def down(self, cluster_name):
        cluster_dir = self._cluster_dir(cluster_name)
        if not cluster_dir.exists():
            return
        for job_dir in self._job_dirs(cluster_dir):
            self._kill_job(job_dir)
        # Logs live outside the cluster directory, so the history keeps them.
        shutil.rmtree(cluster_dir, ignore_errors=True)


# Called with a job's name when a job this process started ends: SkyDeck notices the end in a
# second instead of at the next poll (the experiments app listens; the backend decides nothing).
JOB_END_LISTENERS = []


def _reap_later(proc, name):
    """Reap the child when it exits, and say that it ended, if this process is still alive then.

    Without it a long-lived worker would collect zombies; a thread per job is
    cheap and daemonic, and the job itself never depends on it.
    """

    def wait():
        proc.wait()
        for listener in list(JOB_END_LISTENERS):
            with contextlib.suppress(Exception):
                listener(name)

    threading.Thread(target=wait, daemon=True, name=f"reap-{proc.pid}").start()
