"""The same flag validation from the dashboard form, the admin and the API."""

import json

import pytest

from experiments.flags import import_model
from experiments.forms import ExperimentForm
from experiments.models import ApiToken, Experiment
from tests.factories import ExperimentFactory, UserFactory
from tests.support import Config


@pytest.fixture
def schema(db):
    import_model(Config, "cfg")


def form_data(name, flags):
    data = {
        "name": name,
        "command": "python train.py",
        "flag_style": "plain",
        "backend": "local",
        "num_nodes": "1",
        "restart_policy": "never",
        "max_restarts": "3",
        "desired_state": "STOPPED",
        "tags": "",
        "envs": "",
    }
    for i, (key, (kind, raw)) in enumerate(flags.items()):
        data.update({f"flag-r{i}-key": key, f"flag-r{i}-type": kind, f"flag-r{i}-value": raw})
    return data


def save_with_form(flags):
    form = ExperimentForm(data=form_data("via-form", flags))
    if form.is_valid():
        return form.save(), None
    rows = " ".join(r.error for r in form.flag_rows)
    return None, rows + " " + json.dumps(form.errors)


def save_with_admin(client, flags):
    admin = UserFactory(username="admin", is_staff=True, is_superuser=True)
    client.force_login(admin)
    data = {
        "name": "via-admin",
        "command": "python train.py",
        "flags": json.dumps({k: v for k, (_, v) in flags.items()}),
        "flag_style": "plain",
        "backend": "local",
        "num_nodes": "1",
        "restart_policy": "never",
        "max_restarts": "3",
        "desired_state": "STOPPED",
        "tags": "[]",
        "envs": "{}",
        "description": "",
        "run_number": "0",
        "reconciled_run": "0",
        "jobs-TOTAL_FORMS": "0",
        "jobs-INITIAL_FORMS": "0",
        "jobs-MIN_NUM_FORMS": "0",
        "jobs-MAX_NUM_FORMS": "0",
    }
    response = client.post("/admin/experiments/experiment/add/", data)
    if response.status_code == 302:
        return Experiment.objects.get(name="via-admin"), None
    assert response.status_code == 200
    return None, response.content.decode()


def save_with_api(client, flags):
    token = ApiToken.issue(UserFactory(username="scripter"))[1]
    body = {"name": "via-api", "command": "python train.py", "flags": {k: v for k, (_, v) in flags.items()}}
    response = client.post(
        "/api/experiments",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    if response.status_code == 201:
        return Experiment.objects.get(name="via-api"), None
    assert response.status_code == 400
    return None, response.json()["message"]


CHANNELS = ["form", "admin", "api"]


def save(channel, client, flags):
    if channel == "form":
        return save_with_form(flags)
    if channel == "admin":
        return save_with_admin(client, flags)
    return save_with_api(client, flags)


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_value_that_does_not_fit_is_refused_naming_the_flag(schema, client, channel):
    experiment, error = save(channel, client, {"trainer.epochs": ("string", "many")})
    assert experiment is None
    assert "trainer.epochs" in error
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_choice_outside_the_list_is_refused(schema, client, channel):
    experiment, error = save(channel, client, {"trainer.optimizer.kind": ("string", "rmsprop")})
    assert experiment is None
    assert "trainer.optimizer.kind" in error and "adam" in error


@pytest.mark.parametrize("channel", CHANNELS)
def test_values_are_coerced_and_unknown_flags_kept(schema, client, channel):
    experiment, error = save(channel, client, {"trainer.optimizer.lr": ("string", "0.5"), "mystery": ("string", "x")})
    assert error is None
    experiment.refresh_from_db()
    assert experiment.flags == {"trainer.optimizer.lr": 0.5, "mystery": "x"}
    assert experiment.unknown_flags == ["mystery"]


def test_model_full_clean_is_the_one_place(schema):
    from django.core.exceptions import ValidationError

    experiment = ExperimentFactory.build(name="direct", flags={"trainer.amp": "perhaps"})
    with pytest.raises(ValidationError) as exc:
        experiment.full_clean()
    assert "trainer.amp" in str(exc.value.message_dict["flags"])


def test_the_admin_edits_flag_schemas_with_checks(db, client):
    from experiments.models import FlagSchema

    admin = UserFactory(username="admin", is_staff=True, is_superuser=True)
    client.force_login(admin)
    data = {
        "namespace": "cfg",
        "path": "opt",
        "type": "choice",
        "type_name": "",
        "default": '"adam"',
        "choices": "[]",
        "description": "",
        "source": "manual",
    }
    response = client.post("/admin/experiments/flagschema/add/", data)
    assert response.status_code == 200 and b"needs its list of choices" in response.content
    data["choices"] = '["adam", "sgd"]'
    response = client.post("/admin/experiments/flagschema/add/", data)
    assert response.status_code == 302
    assert FlagSchema.objects.get(path="opt").choices == ["adam", "sgd"]
