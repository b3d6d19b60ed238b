"""The clusters and system pages, the stale-data banner."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clusters.models import BackendHealth, Cluster, Heartbeat
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


@pytest.fixture
def clusters(db):
    ExperimentFactory(name="mine", desired_state="RUNNING")
    owned = Cluster.objects.create(name="sd-mine", backend="local", status="UP", resources="local process", infra="local",
                                   launched_at=timezone.now() - timedelta(hours=2), autostop=30, hourly_cost=0.0)
    foreign = Cluster.objects.create(name="someone-else", backend="skypilot", status="UP", resources="1x A100", hourly_cost=3.1)
    return owned, foreign


def test_cluster_list_marks_skydeck_clusters_and_shows_jobs(owner_client, clusters):
    owned, _ = clusters
    JobFactory(experiment=owned_experiment(), attempt=1, status="RUNNING", cluster_name="sd-mine")
    body = owner_client.get(reverse("clusters:list")).content.decode()
    assert "sd-mine" in body and "someone-else" in body
    assert ">SkyDeck<" in body and "not SkyDeck's" in body
    assert "mine #1" in body and "30 min" in body and "$3.10/h" in body and "2h 0m" in body


def owned_experiment():
    from experiments.models import Experiment

    return Experiment.objects.get(name="mine")


def test_cluster_table_polls_with_a_change_token(owner_client, clusters, django_assert_max_num_queries):
    first = owner_client.get(reverse("clusters:list"), headers=HX)
    assert first.status_code == 200 and "<html" not in first.content.decode()
    with django_assert_max_num_queries(9):
        assert owner_client.get(reverse("clusters:list") + f"?token={first.context['token']}", headers=HX).status_code == 204
    Cluster.objects.filter(name="sd-mine").update(status="STOPPED")
    assert owner_client.get(reverse("clusters:list") + f"?token={first.context['token']}", headers=HX).status_code == 200


def test_stop_of_a_skydeck_cluster_goes_through_its_experiment(owner_client, clusters):
    url = reverse("clusters:action", args=["local", "sd-mine", "stop"])
    response = owner_client.post(url)
    assert "Stop cluster sd-mine?" in response.content.decode()
    assert owned_experiment().desired_state == "RUNNING"
    owner_client.post(url, {"confirmed": "1"})
    assert owned_experiment().desired_state == "STOPPED"
    owner_client.post(reverse("clusters:action", args=["local", "sd-mine", "down"]), {"confirmed": "1"})
    assert owned_experiment().desired_state == "TERMINATED"


def test_down_of_a_foreign_cluster_asks_the_backend(owner_client, local_root):
    """A cluster SkyDeck did not launch: stop and down go straight to the (real, local) backend."""
    from clusters.backends import get_backend
    from clusters.backends.base import LaunchSpec

    get_backend("local").launch(LaunchSpec(job_name="theirs-1", cluster_name="someone-else", command="sleep 300"))
    Cluster.objects.create(name="someone-else", backend="local", status="UP")
    url = reverse("clusters:action", args=["local", "someone-else", "down"])
    assert "Tear down cluster someone-else?" in owner_client.post(url).content.decode()
    assert (local_root / "someone-else").is_dir()  # nothing happens before the confirmation
    response = owner_client.post(url, {"confirmed": "1"}, follow=True)
    assert not (local_root / "someone-else").exists()
    assert "Asked local to down someone-else" in str(list(response.context["messages"])[0])
    # The backend's refusal is shown, not raised: the cluster is gone now.
    response = owner_client.post(reverse("clusters:action", args=["local", "someone-else", "stop"]), {"confirmed": "1"},
                                 follow=True)
    assert "Could not stop someone-else: Cluster someone-else does not exist." in str(list(response.context["messages"])[0])

def test_unknown_cluster_or_action(owner_client, clusters):
    assert owner_client.post(reverse("clusters:action", args=["local", "nope", "stop"])).status_code == 404
    response = owner_client.post(reverse("clusters:action", args=["local", "sd-mine", "explode"]), follow=True)
    assert "Unknown action" in str(list(response.context["messages"])[0])


def test_system_page_reports_loops_backends_queue_and_counts(owner_client, clusters, settings):
    now = timezone.now()
    Heartbeat.objects.create(name="poll", started_at=now - timedelta(seconds=2), finished_at=now, duration=1.5, summary="local: 1 cluster")
    BackendHealth.objects.create(backend="skypilot", reachable=False, unreachable_since=now, last_error="connection refused")
    body = owner_client.get(reverse("system")).content.decode()
    assert "took 1.50 s" in body and "on time" in body and "local: 1 cluster" in body
    assert "never ran" in body  # reconcile
    assert "unreachable" in body and "connection refused" in body
    assert "Queue depth" in body
    assert "?desired=RUNNING" in body


def test_queue_depth_is_unknown_when_the_broker_cannot_be_read(settings):
    from skydeck_site.views import queue_depth

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    assert queue_depth() is None
    settings.CELERY_BROKER_URL = "memory://"
    assert queue_depth() is None


def test_banner_warns_when_the_poller_is_late_or_a_backend_unreachable(owner_client, settings):
    settings.SKYDECK_BACKENDS = ["local", "skypilot"]
    body = owner_client.get("/").content.decode()
    assert "The poller has never run" in body
    old = timezone.now() - timedelta(hours=1)
    Heartbeat.objects.create(name="poll", started_at=old, finished_at=old, duration=1)
    Heartbeat.objects.create(name="reconcile", started_at=old, finished_at=old, duration=1)
    BackendHealth.objects.create(backend="skypilot", reachable=False, unreachable_since=old, last_error="boom")
    body = owner_client.get(reverse("clusters:list")).content.decode()
    assert "The poller is late" in body and "The reconciler is late" in body
    assert "Backend skypilot is unreachable" in body and "boom" in body
    Heartbeat.objects.filter(name__in=["poll", "reconcile"]).update(finished_at=timezone.now())
    BackendHealth.objects.filter(backend="skypilot").update(reachable=True)
    assert 'role="alert"' not in owner_client.get(reverse("system")).content.decode()


def test_polled_fragments_carry_the_banner_out_of_band(owner_client):
    body = owner_client.get("/?token=x", headers=HX).content.decode()
    assert '<div id="system-banner" hx-swap-oob="true">' in body


def test_login_and_logout(client, owner):
    page = client.get(reverse("login")).content.decode()
    assert 'name="username"' in page and 'name="password"' in page
    response = client.post(reverse("login"), {"username": "owner", "password": "correct horse battery"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))
    assert client.get("/").status_code == 302
    bad = client.post(reverse("login"), {"username": "owner", "password": "wrong"})
    assert bad.status_code == 200 and "correct username and password" in bad.content.decode()
