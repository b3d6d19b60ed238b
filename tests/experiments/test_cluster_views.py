"""The Clusters page: what the backends report, and stop/down through the owning experiment."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clusters.models import Cluster
from tests.factories import ClusterFactory, ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


@pytest.fixture
def clusters(db):
    ExperimentFactory(name="mine", desired_state="RUNNING")
    owned = ClusterFactory(
        name="sd-mine", launched_at=timezone.now() - timedelta(hours=2), autostop=30, hourly_cost=0.0
    )
    foreign = ClusterFactory(name="someone-else", backend="skypilot", resources="1x A100", infra="", hourly_cost=3.1)
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
        assert (
            owner_client.get(reverse("clusters:list") + f"?token={first.context['token']}", headers=HX).status_code
            == 204
        )
    Cluster.objects.filter(name="sd-mine").update(status="STOPPED")
    assert (
        owner_client.get(reverse("clusters:list") + f"?token={first.context['token']}", headers=HX).status_code == 200
    )


def test_stop_of_a_skydeck_cluster_goes_through_its_experiment(owner_client, clusters):
    url = reverse("clusters:action", args=["local", "sd-mine", "stop"])
    response = owner_client.post(url)
    assert "Stop cluster sd-mine?" in response.content.decode()
    assert owned_experiment().desired_state == "RUNNING"
    owner_client.post(url, {"confirmed": "1"})
    assert owned_experiment().desired_state == "STOPPED"
    owner_client.post(reverse("clusters:action", args=["local", "sd-mine", "down"]), {"confirmed": "1"})
    assert owned_experiment().desired_state == "TERMINATED"


def test_down_of_a_foreign_cluster_is_handed_to_the_worker(owner_client, local_root, enqueued):
    """A cluster SkyDeck did not launch: the page queues the stop or down; the worker asks the (real, local) backend."""
    from clusters.backends import get_backend
    from clusters.backends.base import LaunchSpec
    from experiments.tasks import cluster_action

    get_backend("local").launch(LaunchSpec(job_name="theirs-1", cluster_name="someone-else", command="sleep 300"))
    ClusterFactory(name="someone-else", backend="local")
    url = reverse("clusters:action", args=["local", "someone-else", "down"])
    assert "Tear down cluster someone-else?" in owner_client.post(url).content.decode()
    response = owner_client.post(url, {"confirmed": "1"}, follow=True)
    assert "Asked local to down someone-else" in str(list(response.context["messages"])[0])
    assert (local_root / "someone-else").is_dir()  # the web calls no backend
    [(task, args)] = [m for m in enqueued() if m[0] == "experiments.tasks.cluster_action"]
    assert args[:3] == ("local", "someone-else", "down")
    assert "requested" in cluster_action(*args)  # what the worker runs
    assert not (local_root / "someone-else").exists()
    # The backend's refusal is the worker's outcome, not a crash.
    assert "failed" in cluster_action("local", "someone-else", "stop")


def test_unknown_cluster_or_action(owner_client, clusters):
    assert owner_client.post(reverse("clusters:action", args=["local", "nope", "stop"])).status_code == 404
    response = owner_client.post(reverse("clusters:action", args=["local", "sd-mine", "explode"]), follow=True)
    assert "Unknown action" in str(list(response.context["messages"])[0])
