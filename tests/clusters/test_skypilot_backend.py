"""The SkyPilot backend without an API server: status mapping, task building, error mapping.

These use the real ``sky`` package (its Task, Resources and exception types);
nothing here talks to a server.
"""

import inspect
import subprocess
import sys

import pytest

from clusters.backends.base import BackendError, BackendUnreachable, ClusterGone, InvalidSpec, LaunchSpec, NotSupported
from clusters.backends.skypilot import (
    ERRORS,
    build_task,
    clean_log,
    map_cluster_status,
    map_exception,
    map_job_status,
    map_managed_job_status,
    resources_kwargs,
)
from tests.support import ROOT


def spec(**overrides):
    values = {"job_name": "sd-exp-1", "cluster_name": "sd-exp", "command": "python train.py lr=0.1"}
    values.update(overrides)
    return LaunchSpec(**values)


# --- lazy import -----------------------------------------------------------------------


def test_check_and_pages_do_not_import_sky():
    code = (
        "import sys, django, os\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'skydeck_site.test_settings')\n"
        "django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('check')\n"
        "import clusters.backends.skypilot, experiments.views, experiments.cluster_views\n"
        "import experiments.log_views, experiments.tasks\n"
        "from clusters.backends import get_backend\n"
        "get_backend('skypilot')\n"
        "print('SKY' if 'sky' in sys.modules else 'NOSKY')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NOSKY")


# --- status mapping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sky_status, expected",
    [("INIT", "INIT"), ("UP", "UP"), ("STOPPED", "STOPPED"), ("AUTOSTOPPING", "STOPPED")],
)
def test_cluster_status_mapping(sky_status, expected):
    import sky

    assert map_cluster_status(sky.ClusterStatus(sky_status)) == expected


def test_every_sky_cluster_status_is_mapped():
    import sky

    for status in sky.ClusterStatus:
        assert map_cluster_status(status) in {"INIT", "UP", "STOPPED"}


@pytest.mark.parametrize(
    "sky_status, expected",
    [
        ("INIT", "PENDING"),
        ("PENDING", "PENDING"),
        ("SETTING_UP", "SETTING_UP"),
        ("RUNNING", "RUNNING"),
        ("SUCCEEDED", "SUCCEEDED"),
        ("FAILED", "FAILED"),
        ("FAILED_SETUP", "FAILED_SETUP"),
        ("FAILED_DRIVER", "FAILED_DRIVER"),
        ("CANCELLED", "CANCELLED"),
    ],
)
def test_job_status_mapping(sky_status, expected):
    import sky

    assert map_job_status(sky.JobStatus(sky_status)) == expected


def test_every_sky_job_status_maps_to_a_skydeck_status():
    import sky

    from experiments.models import JobStatus

    for status in sky.JobStatus:
        assert map_job_status(status) in JobStatus.values


def test_every_managed_job_status_maps_and_recovery_stays_active():
    import sky

    from experiments.models import ACTIVE_JOB_STATUSES, JobStatus

    for status in sky.ManagedJobStatus:
        assert map_managed_job_status(status) in JobStatus.values, status
    # SkyPilot's controller recovers a preempted managed job; SkyDeck must not see a failure.
    assert map_managed_job_status(sky.ManagedJobStatus.RECOVERING) in ACTIVE_JOB_STATUSES
    assert map_managed_job_status(sky.ManagedJobStatus.FAILED_NO_RESOURCE) == "FAILED_LAUNCH"


# --- task building ------------------------------------------------------------------------


def test_task_carries_every_resource_and_the_run_spec(tmp_path):
    s = spec(
        setup="pip install -r requirements.txt",
        envs={"WANDB_MODE": "offline", "SEED": "3"},
        workdir=str(tmp_path),
        accelerators="A100:8",
        num_nodes=2,
        cpus="8+",
        memory="32",
        infra="aws/us-east-1",
        use_spot=True,
        disk_size=256,
        image_id="docker:pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
    )
    task = build_task(s)
    assert task.name == "sd-exp-1"
    assert task.run == "python train.py lr=0.1"
    assert task.setup == "pip install -r requirements.txt"
    assert task.envs == {"WANDB_MODE": "offline", "SEED": "3"}
    assert task.num_nodes == 2
    assert str(tmp_path) in str(task.workdir)
    (res,) = list(task.resources)
    assert res.accelerators == {"A100": 8}
    assert res.cpus == "8+"
    assert res.memory == "32"
    assert str(res.cloud).lower() == "aws" and res.region == "us-east-1"
    assert res.use_spot is True
    assert res.disk_size == 256
    assert res.extract_docker_image() == "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"


def test_slurm_task_like_the_end_to_end_tests():
    task = build_task(spec(infra="slurm", cpus="1", memory="1"))
    (res,) = list(task.resources)
    assert str(res.cloud).lower() == "slurm"
    assert res.cpus == "1" and res.memory == "1"


def test_empty_fields_are_left_to_skypilot():
    assert resources_kwargs(spec()) == {}
    task = build_task(spec())
    (res,) = list(task.resources)
    assert res.cloud is None and res.accelerators is None and res.use_spot is False


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"cpus": "lots"}, "cpus must be a number"),
        ({"memory": "16GB"}, "memory must be a number"),
        ({"infra": "nocloud/us-east-1"}, "nocloud"),
        ({"accelerators": "A100:many"}, "SkyPilot refused the spec"),
        ({"num_nodes": 0}, "num_nodes"),
        ({"workdir": "/nonexistent/skydeck/workdir"}, "does not exist"),
    ],
)
def test_bad_specs_become_a_clear_invalid_spec(overrides, words):
    with pytest.raises(InvalidSpec) as info:
        build_task(spec(**overrides))
    assert info.value.retryable is False
    assert words in info.value.message


# --- error mapping ------------------------------------------------------------------------


def _sky_exception_classes():
    from sky import exceptions

    return [
        cls
        for _, cls in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == exceptions.__name__
    ]


def test_every_sky_exception_type_has_an_outcome():
    """A new exception type in a SkyPilot upgrade fails here until someone decides its outcome."""
    missing = [
        cls.__name__
        for cls in _sky_exception_classes()
        if cls.__name__ not in ERRORS and cls.__name__ not in {"JobExitCode"}
    ]
    assert missing == []


def _make(name, *args, **kwargs):
    from sky import exceptions

    return getattr(exceptions, name)(*args, **kwargs)


def test_no_cloud_access_is_a_failed_launch_with_an_actionable_message():
    err = map_exception(_make("NoCloudAccessError", "No cloud access available."))
    assert err.reason == "NoCloudAccess" and err.retryable is False
    assert "no cloud is enabled" in err.message.lower() and "sky check" in err.message


def test_resources_unavailable_without_a_try_is_not_retried():
    not_enabled = map_exception(
        _make(
            "ResourcesUnavailableError",
            "Task 'x' requires aws which is not enabled. To enable access, change the task cloud requirement "
            "or run: \x1b[1msky check aws\x1b[0m",
        )
    )
    assert not_enabled.reason == "NoCloudAccess" and not not_enabled.retryable
    assert "\x1b" not in not_enabled.message and "sky check" in not_enabled.message
    infeasible = map_exception(
        _make("ResourcesUnavailableError", "Catalog does not contain any instances satisfying the request")
    )
    assert infeasible.reason == "InvalidSpec" and not infeasible.retryable


def test_resources_unavailable_after_trying_is_an_infra_failure_to_retry():
    exc = _make("ResourcesUnavailableError", "No capacity in us-east-1", failover_history=[RuntimeError("zone a full")])
    err = map_exception(exc)
    assert err.reason == "ResourcesUnavailable" and err.retryable is True


def test_cluster_does_not_exist_is_gone():
    err = map_exception(_make("ClusterDoesNotExist", "Cluster 'sd-x' does not exist."))
    assert isinstance(err, ClusterGone)


def test_api_server_connection_error_is_unreachable():
    err = map_exception(_make("ApiServerConnectionError", "http://127.0.0.1:9"))
    assert isinstance(err, BackendUnreachable)
    assert "unreachable" in err.message.lower()


def test_http_connection_errors_are_unreachable():
    import requests

    assert isinstance(map_exception(requests.exceptions.ConnectionError("refused")), BackendUnreachable)
    assert isinstance(map_exception(requests.exceptions.ReadTimeout("slow")), BackendUnreachable)


def test_not_supported_is_not_retried():
    err = map_exception(_make("NotSupportedError", "Stopping is currently not supported for slurm."))
    assert isinstance(err, NotSupported) and err.retryable is False


def test_unknown_errors_are_retryable_backend_errors():
    err = map_exception(KeyError("surprise"))
    assert type(err) is BackendError and err.retryable is True and "KeyError" in err.message


def test_every_sky_exception_maps_to_a_backend_error():
    for cls in _sky_exception_classes():
        if cls.__name__ == "JobExitCode" or not issubclass(cls, Exception):
            continue
        try:
            exc = cls.__new__(cls)
            Exception.__init__(exc, "boom")
        except TypeError:
            continue
        err = map_exception(exc)
        assert isinstance(err, BackendError), cls
        assert err.reason, cls


def test_logs_are_cleaned_for_reading():
    raw = "\x1b[2m├── \x1b[0mWaiting\n\x1b[36m(sd-x-1, pid=1)\x1b[0m hello\nspin\rdone\n"
    assert clean_log(raw) == "├── Waiting\n(sd-x-1, pid=1) hello\ndone\n"


# --- log copies: what is new in a fetch of the last lines ----------------------------------------

FAILED_FETCH = (
    "\x1b[36m(sd-probe-1, pid=27484)\x1b[0m line 5\n"
    "srun: error: vm: task 0: Exited with exit code 3\n"
    "ERROR: \x1b[31mJob 1 failed with return code list:\x1b[0m [3] \n"
    "\x1b[0m\x1b[32m✓ Job finished (status: FAILED).\x1b[0m\x1b[0m\n"
    "srun: error: vm: task 0: Exited with exit code 100\n"
)


def test_skypilots_own_closing_lines_are_not_the_jobs_output():
    from clusters.backends.skypilot import _split_footer

    lines, finished = _split_footer(FAILED_FETCH.splitlines(keepends=True))
    assert "Job finished (status: FAILED)" in finished
    assert [line.split(" ", 1)[-1] for line in lines][-1].startswith("\x1b[31mJob 1 failed")
    assert "exit code 100" not in "".join(lines) and "exit code 3" in "".join(lines)  # the job's own srun line stays
    running, finished = _split_footer(["a\n", "b\n", "srun: error: vm: task 0: Exited with exit code 101\n"])
    assert (running, finished) == (["a\n", "b\n"], "")


def test_the_new_lines_are_those_after_the_copys_end():
    from clusters.backends.skypilot import _after

    assert _after(["c\n", "d\n"], ["a\n", "b\n", "c\n", "d\n", "e\n", "f\n"]) == ["e\n", "f\n"]
    assert _after(["c\n", "d\n"], ["c\n", "d\n"]) == []
    assert _after(["x\n"], ["a\n", "b\n"]) is None  # not among them: ask for more
    assert _after([], ["a\n"]) == ["a\n"]
    # The last place the copy's end appears is the one that counts.
    assert _after(["x\n"], ["x\n", "y\n", "x\n", "z\n"]) == ["z\n"]


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        (FAILED_FETCH, [3]),
        ("ERROR: Job 4 failed with return code list: [0, 137, 2] (A Worker failed)\n", [0, 137, 2]),
        ("ERROR: \x1b[31mJob 2's setup failed with return code 5 (pid=1).\n", [5]),
        ("all good\n", None),
    ],
)
def test_exit_codes_are_read_from_what_skypilot_prints(text, codes):
    from clusters.backends.skypilot import exit_codes_in

    assert exit_codes_in(text) == codes


def test_infra_that_cannot_stop_tears_down_when_idle():
    from clusters.backends.base import infra_cannot_stop

    assert infra_cannot_stop("slurm") and infra_cannot_stop("k8s/my-context") and infra_cannot_stop("Kubernetes")
    assert not infra_cannot_stop("aws/us-east-1") and not infra_cannot_stop("")
    assert spec(infra="slurm", autostop_minutes=10).autostop_down


# --- the local API server's health, asked before the SDK would start one --------------------


def _backend_asking(monkeypatch, url):
    from sky.server import common as server_common

    from clusters.backends import skypilot

    monkeypatch.setattr(server_common, "is_api_server_local", lambda *a, **k: True)
    monkeypatch.setattr(server_common, "get_server_url", lambda *a, **k: url)
    monkeypatch.setattr(skypilot, "SERVER_PATIENCE_SECONDS", 0.5)
    return skypilot.SkyPilotBackend()


def test_a_local_server_that_listens_but_does_not_answer_is_called_busy_not_missing(monkeypatch):
    import socket

    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        backend = _backend_asking(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(BackendUnreachable, match="did not answer its health check within 0.5 s"):
            backend._local_server_answers()


def test_no_local_server_is_said_plainly(monkeypatch):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    backend = _backend_asking(monkeypatch, f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnreachable, match="No SkyPilot API server answers"):
        backend._local_server_answers()
