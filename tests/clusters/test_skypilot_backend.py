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
from tests.conftest import ROOT


def spec(**overrides):
    values = dict(job_name="sd-exp-1", cluster_name="sd-exp", command="python train.py lr=0.1")
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
        "import clusters.backends.skypilot, experiments.views, clusters.views, experiments.tasks\n"
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
        cls for _, cls in inspect.getmembers(exceptions, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == exceptions.__name__
    ]


def test_every_sky_exception_type_has_an_outcome():
    """A new exception type in a SkyPilot upgrade fails here until someone decides its outcome."""
    missing = [cls.__name__ for cls in _sky_exception_classes()
               if cls.__name__ not in ERRORS and cls.__name__ not in {"JobExitCode"}]
    assert missing == []


def _make(name, *args, **kwargs):
    from sky import exceptions

    return getattr(exceptions, name)(*args, **kwargs)


def test_no_cloud_access_is_a_failed_launch_with_an_actionable_message():
    err = map_exception(_make("NoCloudAccessError", "No cloud access available."))
    assert err.reason == "NoCloudAccess" and err.retryable is False
    assert "no cloud is enabled" in err.message.lower() and "sky check" in err.message


def test_resources_unavailable_without_a_try_is_not_retried():
    not_enabled = map_exception(_make(
        "ResourcesUnavailableError",
        "Task 'x' requires aws which is not enabled. To enable access, change the task cloud requirement or run: \x1b[1msky check aws\x1b[0m",
    ))
    assert not_enabled.reason == "NoCloudAccess" and not not_enabled.retryable
    assert "\x1b" not in not_enabled.message and "sky check" in not_enabled.message
    infeasible = map_exception(_make("ResourcesUnavailableError", "Catalog does not contain any instances satisfying the request"))
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
