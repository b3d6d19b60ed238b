"""Who may do what: everyone logged in reads; only the owner, its group's members and staff change."""

import json

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from experiments import intent
from experiments.models import ApiToken, Experiment
from tests.factories import ExperimentFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def mine(owner):
    return ExperimentFactory(name="mine", owner=owner, command="echo mine")


def test_another_user_reads_but_cannot_change(mine, other_user, client):
    client.force_login(other_user)
    page = client.get(mine.get_absolute_url())
    assert page.status_code == 200 and "you may look, not change it" in page.content.decode()
    for url, data in [
        (reverse("experiments:set_state", args=["mine"]), {"state": "RUNNING"}),
        (reverse("experiments:restart", args=["mine"]), {}),
        (reverse("experiments:delete", args=["mine"]), {"confirmed": "1"}),
        (reverse("experiments:star", args=["mine"]), {}),
    ]:
        client.post(url, data)
    mine.refresh_from_db()
    assert (mine.desired_state, mine.run_number, mine.starred) == ("STOPPED", 0, False)
    assert Experiment.objects.filter(name="mine").exists() and not mine.events.exists()
    edit = {
        "command": "echo theirs", "flag_style": "plain", "backend": "local", "num_nodes": "1",
        "restart_policy": "never", "max_restarts": "3", "desired_state": "STOPPED",
    }  # fmt: skip
    client.post(reverse("experiments:edit", args=["mine"]), edit)
    mine.refresh_from_db()
    assert mine.command == "echo mine"


def test_bulk_actions_refuse_what_the_user_may_not_change_and_change_nothing(mine, owner, other_user, client):
    theirs = ExperimentFactory(name="theirs", owner=other_user)
    client.force_login(other_user)
    response = client.post(
        reverse("experiments:bulk"), {"action": "RUNNING", "selected": [mine.pk, theirs.pk]}, follow=True
    )
    assert "You may not change mine" in response.content.decode()
    assert set(Experiment.objects.values_list("desired_state", flat=True)) == {"STOPPED"}


def test_the_api_answers_403_to_someone_elses_experiment(mine, other_user, client):
    headers = {"Authorization": f"Bearer {ApiToken.issue(other_user)[1]}"}
    assert client.get("/api/experiments/mine", headers=headers).status_code == 200
    body = json.dumps({"desired_state": "RUNNING"})
    response = client.post("/api/experiments/mine/state", body, content_type="application/json", headers=headers)
    assert response.status_code == 403 and "only the owner" in response.json()["message"]
    patch = json.dumps({"command": "rm -rf ~"})
    assert (
        client.patch("/api/experiments/mine", patch, content_type="application/json", headers=headers).status_code
        == 403
    )
    assert client.delete("/api/experiments/mine", headers=headers).status_code == 403
    mine.refresh_from_db()
    assert mine.command == "echo mine"


def test_group_members_and_staff_may_change_it(mine, other_user):
    team = Group.objects.create(name="team")
    with pytest.raises(PermissionDenied):
        intent.set_desired_state(intent.Actor(other_user, "user"), mine, "RUNNING")
    mine.group = team
    mine.save(update_fields=["group"])
    other_user.groups.add(team)
    assert intent.set_desired_state(intent.Actor(other_user, "user"), mine, "RUNNING")
    boss = UserFactory(username="boss", is_staff=True)
    assert intent.set_desired_state(intent.Actor(boss, "user"), mine, "STOPPED")
    # SkyDeck itself (a budget, the operator's command line) changes anything.
    assert intent.set_desired_state(intent.Actor.system(), mine, "RUNNING")


def test_only_staff_give_an_experiment_away(mine, owner, other_user):
    with pytest.raises(PermissionDenied):
        intent.edit(intent.Actor(owner, "user"), mine, {"owner": other_user})
    intent.edit(intent.Actor(UserFactory(username="boss", is_staff=True), "admin"), mine, {"owner": other_user})
    mine.refresh_from_db()
    assert mine.owner == other_user


def test_what_a_user_creates_or_clones_is_theirs(owner, other_user, mine):
    copy = intent.clone(intent.Actor(other_user, "user"), mine)
    assert copy.owner == other_user and copy.created_by == other_user


def test_the_list_shows_mine_by_default_to_someone_who_owns_any(mine, owner, other_user, owner_client):
    ExperimentFactory(name="theirs", owner=other_user)
    names = [row.experiment.name for row in owner_client.get("/").context["rows"]]
    assert names == ["mine"]
    names = sorted(row.experiment.name for row in owner_client.get("/?who=all").context["rows"])
    assert names == ["mine", "theirs"]
    newcomer = UserFactory(username="newcomer")
    owner_client.force_login(newcomer)  # owns nothing: sees everyone's
    assert len(owner_client.get("/").context["rows"]) == 2


def test_the_local_backend_for_staff_only(settings, owner):
    settings.SKYDECK_LOCAL_BACKEND = "staff"
    with pytest.raises(Exception) as info:
        intent.create(intent.Actor(owner, "user"), Experiment(name="here", command="id", backend="local"))
    assert "only staff" in str(info.value)
    boss = UserFactory(username="boss", is_staff=True)
    assert intent.create(intent.Actor(boss, "user"), Experiment(name="here", command="id", backend="local")).pk
