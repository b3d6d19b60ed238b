"""The SkyPilot backend against real API servers: one with no cloud enabled, and one that is not there.

The no-cloud server is a real SkyPilot API server started by the fixture with
its own HOME and port; the unreachable one is a closed port on this machine.
"""

import socket

import pytest

from clusters.models import BackendHealth, Cluster
from experiments.models import Event, Job
from experiments.observe import poll_all
from experiments.reconciler import reconcile
from experiments.tasks import run_poll
from tests.factories import ExperimentFactory, JobFactory
from tests.support import set_state, wait_for


def skypilot_experiment(**kwargs):
    kwargs.setdefault("backend", "skypilot")
    kwargs.setdefault("command", "echo hello")
    kwargs.setdefault("cpus", "1")
    return ExperimentFactory(**kwargs)


def _poll_until(predicate, timeout=90.0):
    return wait_for(predicate, timeout, 0.5, "the polls to show it", between=run_poll)


@pytest.mark.skypilot
@pytest.mark.django_db
def test_running_experiment_without_any_cloud_ends_failed_launch_in_seconds(use_nocloud_server):
    """SkyDeck asks the server which clouds it has (once, remembered) before it launches: no cloud, no launch."""
    exp = skypilot_experiment(name="nocloud")
    set_state(exp, "RUNNING")
    backend = use_nocloud_server
    backend.calls.clear()
    outcome = reconcile(exp.pk)
    assert "launch" in outcome.actions
    assert "launch" not in backend.calls and backend.calls["enabled_clouds"] == 1
    job = exp.jobs.get()
    exp.refresh_from_db()
    assert job.status == "FAILED_LAUNCH" and not job.launch_request_id  # nothing was submitted
    assert job.failure_reason == "NoCloudAccess"
    assert "no cloud is enabled" in job.error_message.lower() and "sky check" in job.error_message
    assert exp.phase == "FAILED" and exp.status_reason == "NoCloudAccess"
    assert exp.jobs.count() == 1  # not retried
    # Asked once per server: a second experiment learns it without asking again.
    other = skypilot_experiment(name="nocloud-2")
    set_state(other, "RUNNING")
    reconcile(other.pk)
    assert backend.calls["enabled_clouds"] == 1 and other.jobs.get().failure_reason == "NoCloudAccess"

    polls, _ = run_poll()
    (poll,) = polls
    assert poll.reachable and poll.clusters == {} and poll.jobs == {}
    assert not Cluster.objects.filter(backend="skypilot").exists()
    health = BackendHealth.objects.get(backend="skypilot")
    assert health.reachable and health.details["enabled_infra"] == []
    assert health.details["url"] == use_nocloud_server.server()["url"]


@pytest.mark.skypilot
@pytest.mark.django_db
def test_bad_spec_fails_at_once_without_retry(use_nocloud_server):
    exp = skypilot_experiment(name="badspec", infra="nocloud/us-east-1", restart_policy="on_failure")
    set_state(exp, "RUNNING")
    reconcile(exp.pk)
    exp.refresh_from_db()
    job = exp.jobs.get()
    assert job.status == "FAILED_LAUNCH" and job.failure_reason == "InvalidSpec"
    assert "nocloud" in job.error_message
    assert exp.phase == "FAILED" and exp.status_reason == "InvalidSpec"


def _calls_for_one_poll(backend):
    """The SDK calls of one poll alone (run_poll would also reconcile what changed)."""
    backend.calls.clear()
    poll_all(["skypilot"])
    return dict(backend.calls)


@pytest.mark.skypilot
@pytest.mark.django_db
def test_calls_per_poll_do_not_grow_with_experiments(use_nocloud_server):
    backend = use_nocloud_server

    def add(n, offset):
        for i in range(n):
            exp = skypilot_experiment(name=f"count-{offset + i}", desired_state="RUNNING")
            # A job whose cluster no longer exists, and a launch request in flight.
            JobFactory(experiment=exp, backend="skypilot", attempt=1, status="SUCCEEDED", cluster_name=exp.cluster_name)
            JobFactory(
                experiment=exp,
                backend="skypilot",
                attempt=2,
                status="RUNNING",
                cluster_name=exp.cluster_name,
                sky_job_id=2,
            )

    add(1, 0)
    one = _calls_for_one_poll(backend)
    add(14, 1)
    many = _calls_for_one_poll(backend)
    assert one == many, (one, many)
    # status + cost_report, each submitted then fetched with get.
    assert one == {"status": 1, "cost_report": 1, "get": 2}
    # And the vanished jobs were all marked lost as infrastructure failures.
    lost = Job.objects.filter(status="LOST")
    assert lost.count() == 15 and set(lost.values_list("failure_kind", flat=True)) == {"infra"}


@pytest.mark.skypilot
@pytest.mark.django_db
def test_requests_in_flight_cost_one_api_status_call(use_nocloud_server):
    backend = use_nocloud_server
    import uuid

    for i in range(6):
        exp = skypilot_experiment(name=f"inflight-{i}", desired_state="RUNNING")
        JobFactory(
            experiment=exp,
            backend="skypilot",
            attempt=1,
            status="LAUNCHING",
            cluster_name=exp.cluster_name,
            launch_request_id=str(uuid.uuid4()),
        )
    calls = _calls_for_one_poll(backend)
    # One api_status for all six (asked again once after a health check, because
    # the server knows none of them), then status and cost_report.
    assert calls["api_status"] <= 2 and calls.get("api_health", 0) <= 1
    assert calls["status"] == 1 and calls["cost_report"] == 1 and calls["get"] == 2
    assert set(Job.objects.values_list("failure_reason", flat=True)) == {"RequestLost"}


# --- an API server that is not there ---------------------------------------------------------


@pytest.fixture
def unreachable_endpoint(sky_endpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Bound and closed: nothing listens there.
    return sky_endpoint(f"http://127.0.0.1:{port}")


@pytest.mark.django_db
def test_unreachable_server_changes_nothing_and_backs_off(unreachable_endpoint):
    backend = unreachable_endpoint
    exp = skypilot_experiment(name="unreach", desired_state="RUNNING", run_number=1, reconciled_run=1, phase="RUNNING")
    job = JobFactory(
        experiment=exp,
        backend="skypilot",
        attempt=1,
        run_number=1,
        status="RUNNING",
        cluster_name=exp.cluster_name,
        sky_job_id=7,
    )
    Cluster.objects.create(backend="skypilot", name=exp.cluster_name, status="UP")

    polls, _ = run_poll()
    (poll,) = polls
    assert not poll.reachable and "unreachable" in poll.error.lower()
    health = BackendHealth.objects.get(backend="skypilot")
    assert not health.reachable and health.unreachable_since is not None
    assert health.next_poll_at > health.unreachable_since
    since = health.unreachable_since
    # Told once, to whoever subscribed to it (experiments.notify).
    (told,) = Event.objects.filter(data__notify="backend_unreachable")
    assert told.experiment is None and "skypilot backend became unreachable" in told.message

    # Nothing about the world changed: the job runs, the cluster is there, nothing failed.
    job.refresh_from_db()
    exp.refresh_from_db()
    assert job.status == "RUNNING" and job.failure_kind == "none"
    assert Cluster.objects.filter(name=exp.cluster_name, status="UP").exists()
    assert exp.phase != "FAILED"

    # The next poll backs off without calling SkyPilot at all.
    backend.calls.clear()
    polls, _ = run_poll()
    assert polls[0].skipped and sum(backend.calls.values()) == 0
    health.refresh_from_db()
    assert health.unreachable_since == since and health.consecutive_failures == 1
    assert Event.objects.filter(data__notify="backend_unreachable").count() == 1


@pytest.mark.django_db
def test_launch_while_unreachable_keeps_the_intent_and_fails_nothing(unreachable_endpoint):
    exp = skypilot_experiment(name="unreach-launch")
    set_state(exp, "RUNNING")
    reconcile(exp.pk)
    exp.refresh_from_db()
    job = exp.jobs.get()
    # The intent is written; the launch is unknown, so nothing is marked failed.
    assert job.status == "LAUNCHING" and job.failure_kind == "none"
    assert exp.status_reason == "BackendUnreachable" and exp.phase != "FAILED"

    run_poll()  # marks the backend unreachable
    outcome = reconcile(exp.pk)
    assert outcome.reason == "BackendUnreachable" and not outcome.actions
    job.refresh_from_db()
    assert job.status == "LAUNCHING"
