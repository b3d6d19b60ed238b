"""The REST API: every endpoint authorised, unauthorised, with bad input and not found."""

import json

import pytest
from django.test import Client

from experiments.models import ApiToken, Event, Experiment, FlagSchema, Job, Sweep
from tests.factories import ExperimentFactory, FlagSchemaFactory, JobFactory, SweepFactory


@pytest.fixture
def token(owner):
    return ApiToken.issue(owner, name="tests")[1]


@pytest.fixture
def api(client, token):
    """A client that sends the owner's bearer token."""

    class Api:
        def __init__(self):
            self.headers = {"Authorization": f"Bearer {token}"}

        def get(self, path, **params):
            return client.get(path, params, headers=self.headers)

        def post(self, path, body=None):
            return client.post(path, json.dumps(body) if body is not None else "", content_type="application/json", headers=self.headers)

        def patch(self, path, body):
            return client.patch(path, json.dumps(body), content_type="application/json", headers=self.headers)

        def delete(self, path):
            return client.delete(path, headers=self.headers)

    return Api()


@pytest.fixture
def experiment(db):
    return ExperimentFactory(name="exp-one", flags={"lr": 0.1})


# Every endpoint, as (method, path) with an existing experiment "exp-one", job and sweep "sw".
ENDPOINTS = [
    ("get", "/api/experiments"),
    ("post", "/api/experiments"),
    ("get", "/api/experiments/exp-one"),
    ("patch", "/api/experiments/exp-one"),
    ("delete", "/api/experiments/exp-one"),
    ("post", "/api/experiments/exp-one/state"),
    ("get", "/api/experiments/exp-one/status"),
    ("get", "/api/experiments/exp-one/jobs"),
    ("post", "/api/experiments/exp-one/flags"),
    ("post", "/api/jobs/{job}/cancel"),
    ("get", "/api/jobs/{job}/logs"),
    ("get", "/api/clusters"),
    ("get", "/api/health"),
    ("get", "/api/flag-schemas"),
    ("post", "/api/refresh"),
    ("post", "/api/reconcile"),
    ("get", "/api/sweeps"),
    ("post", "/api/sweeps"),
    ("get", "/api/sweeps/sw"),
    ("post", "/api/sweeps/sw/state"),
    ("post", "/api/sweeps/sw/rerun-failed"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_refuses_anonymous_requests(client, experiment, method, path):
    job = JobFactory(experiment=experiment, status="RUNNING")
    SweepFactory(name="sw")
    response = getattr(client, method)(path.format(job=job.pk), content_type="application/json")
    assert response.status_code == 401
    assert response.json()["message"].startswith("Authentication required")
    assert Experiment.objects.filter(name="exp-one").exists()


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer sdk_\u00e9"])
def test_a_wrong_token_is_401(client, experiment, header):
    response = client.get("/api/experiments", headers={"Authorization": header})
    assert response.status_code == 401


def test_a_revoked_token_is_401(client, owner, experiment):
    token, key = ApiToken.issue(owner)
    assert client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    token.revoke()
    assert client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_the_session_works_and_needs_csrf_to_change_things(owner, experiment):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.get("/api/experiments/exp-one").status_code == 200
    response = client.post("/api/experiments/exp-one/state", {"desired_state": "TERMINATED"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]
    from django.middleware.csrf import _get_new_csrf_string

    csrf = _get_new_csrf_string()
    client.cookies["csrftoken"] = csrf
    response = client.post(
        "/api/experiments/exp-one/state", {"desired_state": "TERMINATED"}, content_type="application/json",
        headers={"X-CSRFToken": csrf},
    )
    assert response.status_code == 200, response.content
    assert response.json()["desired_state"] == "TERMINATED"


# --- experiments ---------------------------------------------------------------------------


def test_list_experiments_paginates(api, db):
    for i in range(5):
        ExperimentFactory(name=f"page-{i}")
    page = api.get("/api/experiments", limit=2).json()
    assert page["count"] == 5 and len(page["items"]) == 2 and page["next_offset"] == 2
    last = api.get("/api/experiments", limit=2, offset=4).json()
    assert len(last["items"]) == 1 and last["next_offset"] is None
    assert api.get("/api/experiments", limit=0).status_code == 422
    assert api.get("/api/experiments", offset=-1).status_code == 422


def test_list_experiments_filters(api, db):
    ExperimentFactory(name="a-running", desired_state="RUNNING", tags=["team:x"])
    ExperimentFactory(name="b-stopped")
    names = [e["name"] for e in api.get("/api/experiments", desired_state="RUNNING").json()["items"]]
    assert names == ["a-running"]
    names = [e["name"] for e in api.get("/api/experiments", tag="team:x").json()["items"]]
    assert names == ["a-running"]
    assert api.get("/api/experiments", desired_state="SIDEWAYS").status_code == 422


def test_create_experiment(api, owner):
    response = api.post("/api/experiments", {"name": "new-one", "command": "python train.py", "flags": {"lr": 0.01, "name": "x y"}})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "new-one" and body["flags"] == {"lr": 0.01, "name": "x y"}
    assert body["desired_state"] == "STOPPED" and body["unknown_flags"] == ["lr", "name"]
    experiment = Experiment.objects.get(name="new-one")
    assert experiment.created_by == owner
    assert experiment.events.filter(kind=Event.Kind.CREATED, actor="api").exists()


def test_create_running_experiment_asks_for_a_run(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        response = api.post("/api/experiments", {"name": "go", "command": "echo", "desired_state": "RUNNING"})
    assert response.status_code == 201
    assert Experiment.objects.get(name="go").run_number == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "echo"}, "name"),
        ({"name": "Bad Name", "command": "echo"}, "name"),
        ({"name": "ok"}, "command"),
        ({"name": "ok", "command": "echo", "num_nodes": 0}, "num_nodes"),
        ({"name": "ok", "command": "echo", "backend": "mainframe"}, "backend"),
        ({"name": "ok", "command": "echo", "flags": {"bad key": 1}}, "flags.bad key"),
        ({"name": "ok", "command": "echo", "flags": {"lr": [1, 2]}}, "flags.lr"),
        ({"name": "ok", "command": "echo\u0000"}, "command"),
    ],
)
def test_create_experiment_bad_input_is_422_naming_the_field(api, body, field):
    response = api.post("/api/experiments", body)
    assert response.status_code == 422, response.content
    payload = response.json()
    assert payload["field"] is not None and payload["field"].startswith(field.split(".")[0])
    assert payload["message"]


def test_create_experiment_refused_by_the_flag_schema_is_400(api, db):
    FlagSchemaFactory(path="trainer.lr", type="float", source="model")
    response = api.post("/api/experiments", {"name": "ok", "command": "echo", "flags": {"trainer.lr": "fast"}})
    assert response.status_code == 400
    assert response.json()["field"] == "flags"
    assert "trainer.lr" in response.json()["message"]
    assert not Experiment.objects.filter(name="ok").exists()


def test_create_experiment_coerces_to_the_schema(api, db):
    FlagSchemaFactory(path="trainer.lr", type="float", source="model")
    FlagSchemaFactory(path="trainer.amp", type="boolean", source="model")
    response = api.post("/api/experiments", {"name": "ok", "command": "echo", "flags": {"trainer.lr": "0.5", "trainer.amp": "yes"}})
    assert response.status_code == 201
    assert response.json()["flags"] == {"trainer.lr": 0.5, "trainer.amp": True}
    assert response.json()["unknown_flags"] == []


def test_create_duplicate_is_409(api, experiment):
    response = api.post("/api/experiments", {"name": "exp-one", "command": "echo"})
    assert response.status_code == 409
    assert response.json()["field"] == "name"


def test_malformed_json_is_400(client, token, db):
    response = client.post("/api/experiments", "{nope", content_type="application/json", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (400, 422)
    assert "message" in response.json()


def test_get_experiment_by_id_or_name(api, experiment):
    assert api.get(f"/api/experiments/{experiment.pk}").json()["name"] == "exp-one"
    body = api.get("/api/experiments/exp-one").json()
    assert body["id"] == experiment.pk and body["active_job"] is None and body["last_job"] is None


@pytest.mark.parametrize("ref", ["nope", "999999", "99999999999999999999999", "Bad Name", "%00"])
def test_get_experiment_not_found(api, db, ref):
    response = api.get(f"/api/experiments/{ref}")
    assert response.status_code == 404
    assert response.json()["message"].startswith("No experiment")


def test_patch_experiment(api, experiment):
    response = api.patch("/api/experiments/exp-one", {"command": "python other.py", "accelerators": "H100:8"})
    assert response.status_code == 200, response.content
    experiment.refresh_from_db()
    assert experiment.command == "python other.py" and experiment.accelerators == "H100:8"
    assert experiment.generation == 2
    assert experiment.events.filter(kind=Event.Kind.SPEC).exists()


def test_patch_desired_state_goes_through_the_model(api, experiment):
    response = api.patch("/api/experiments/exp-one", {"desired_state": "RUNNING"})
    assert response.status_code == 200
    experiment.refresh_from_db()
    assert experiment.desired_state == "RUNNING" and experiment.run_number == 1
    assert experiment.events.filter(kind=Event.Kind.DESIRED_STATE, actor="api").exists()


def test_patch_bad_input(api, experiment):
    assert api.patch("/api/experiments/exp-one", {"num_nodes": -1}).status_code == 422
    response = api.patch("/api/experiments/exp-one", {"command": None})
    assert response.status_code == 400 and response.json()["field"] == "command"
    assert api.patch("/api/experiments/nope", {"command": "x"}).status_code == 404


def test_delete_experiment(api, experiment):
    assert api.delete("/api/experiments/exp-one").status_code == 204
    assert not Experiment.objects.filter(name="exp-one").exists()
    assert Event.objects.filter(kind=Event.Kind.DELETE, data__name="exp-one").exists()
    assert api.delete("/api/experiments/exp-one").status_code == 404


def test_delete_with_an_active_job_is_409(api, experiment):
    JobFactory(experiment=experiment, status="RUNNING")
    response = api.delete("/api/experiments/exp-one")
    assert response.status_code == 409
    assert Experiment.objects.filter(name="exp-one").exists()


def test_set_state(api, experiment):
    response = api.post(f"/api/experiments/{experiment.pk}/state", {"desired_state": "RUNNING"})
    assert response.status_code == 200
    assert response.json()["desired_state"] == "RUNNING"
    assert api.post("/api/experiments/exp-one/state", {"desired_state": "PAUSED"}).status_code == 422
    assert api.post("/api/experiments/exp-one/state", {}).status_code == 422
    assert api.post("/api/experiments/nope/state", {"desired_state": "RUNNING"}).status_code == 404


def test_status(api, experiment):
    JobFactory(experiment=experiment, attempt=1, status="FAILED")
    JobFactory(experiment=experiment, attempt=2, status="RUNNING")
    body = api.get("/api/experiments/exp-one/status").json()
    assert body["active_job"]["attempt"] == 2 and body["last_job"]["attempt"] == 2
    assert body["cluster"] is None
    assert api.get("/api/experiments/nope/status").status_code == 404


def test_jobs(api, experiment):
    for attempt in (1, 2, 3):
        JobFactory(experiment=experiment, attempt=attempt)
    body = api.get("/api/experiments/exp-one/jobs", limit=2).json()
    assert [j["attempt"] for j in body["items"]] == [3, 2] and body["count"] == 3
    assert api.get("/api/experiments/exp-one/jobs", limit=100000).status_code == 422
    assert api.get("/api/experiments/nope/jobs").status_code == 404


def test_set_flags_replace_and_merge(api, experiment):
    body = api.post("/api/experiments/exp-one/flags", {"flags": {"epochs": 3}}).json()
    assert body["flags"] == {"epochs": 3}
    body = api.post("/api/experiments/exp-one/flags", {"flags": {"lr": 0.2}, "merge": True}).json()
    assert body["flags"] == {"epochs": 3, "lr": 0.2}


def test_set_flags_bad_input(api, experiment):
    FlagSchemaFactory(path="optimizer", type="choice", choices=["adam", "sgd"], source="model")
    response = api.post("/api/experiments/exp-one/flags", {"flags": {"optimizer": "rmsprop"}})
    assert response.status_code == 400
    assert "optimizer" in response.json()["message"] and "adam" in response.json()["message"]
    assert api.post("/api/experiments/exp-one/flags", {"flags": "lr=1"}).status_code == 422
    assert api.post("/api/experiments/nope/flags", {"flags": {}}).status_code == 404


# --- jobs ----------------------------------------------------------------------------------


def test_cancel_job(api, experiment, local_root):
    job = JobFactory(experiment=experiment, status="RUNNING", sky_job_id=None, cluster_name="sd-exp-one")
    response = api.post(f"/api/jobs/{job.pk}/cancel")
    assert response.status_code == 200, response.content
    job.refresh_from_db()
    assert job.status == "CANCELLED" and job.ended_at is not None
    assert experiment.events.filter(kind=Event.Kind.CANCEL, actor="api").exists()
    # A finished job cannot be cancelled; by name too.
    response = api.post(f"/api/jobs/{job.name}/cancel")
    assert response.status_code == 409
    assert api.post("/api/jobs/424242/cancel").status_code == 404


def test_job_logs(api, experiment, tmp_path, local_root):
    log = tmp_path / "out.log"
    log.write_text("hello\nworld\n")
    job = JobFactory(experiment=experiment, status="SUCCEEDED", log_path=str(log))
    body = api.get(f"/api/jobs/{job.pk}/logs").json()
    assert body["text"] == "hello\nworld\n" and body["offset"] == 12
    body = api.get(f"/api/jobs/{job.pk}/logs", offset=6).json()
    assert body["text"] == "world\n"
    assert api.get(f"/api/jobs/{job.pk}/logs", offset=-5).status_code == 422
    assert api.get(f"/api/jobs/{job.pk}/logs", offset="x").status_code == 422
    assert api.get("/api/jobs/nope/logs").status_code == 404


# --- clusters, health, flag schemas, loops -----------------------------------------------------


def test_clusters(api, db):
    from clusters.models import Cluster

    Cluster.objects.create(name="sd-a", backend="local", status="UP")
    body = api.get("/api/clusters").json()
    assert body["count"] == 1 and body["items"][0]["name"] == "sd-a" and body["items"][0]["owned"] is True
    assert api.get("/api/clusters", limit="lots").status_code == 422


def test_health(api, db):
    body = api.get("/api/health").json()
    assert body["database"] is True and body["status"] in ("ok", "degraded")


def test_flag_schemas(api, db):
    FlagSchemaFactory(namespace="Train", path="trainer.optimizer.lr", type="float", description="learning rate")
    FlagSchemaFactory(namespace="Train", path="model.layers", type="integer")
    body = api.get("/api/flag-schemas", q="lr").json()
    assert [r["path"] for r in body["items"]] == ["trainer.optimizer.lr"]
    assert api.get("/api/flag-schemas", namespace="Train").json()["count"] == 2
    assert api.get("/api/flag-schemas", limit=-1).status_code == 422


def test_refresh_and_reconcile_are_queued(api, db, settings):
    # The suite's broker is the filesystem transport: a queued task is a file.
    queue = settings.VAR_DIR / "broker" / "queue"
    before = set(queue.iterdir())
    assert api.post("/api/refresh").status_code == 202
    assert api.post("/api/reconcile").status_code == 202
    added = [p.read_text() for p in set(queue.iterdir()) - before]
    assert len(added) == 2
    assert any("experiments.tasks.poll" in body for body in added)
    assert any("experiments.tasks.reconcile_all" in body for body in added)


def test_refresh_with_the_broker_down_is_503(api, db):
    from tests.conftest import use_broker

    with use_broker("redis://127.0.0.1:9/0"):  # nothing listens on port 9
        response = api.post("/api/refresh")
    assert response.status_code == 503
    assert response.json()["message"]


# --- sweeps -------------------------------------------------------------------------------------


def test_create_and_read_a_sweep(api, experiment):
    body = {
        "name": "lr-sweep", "base": "exp-one", "kind": "grid", "max_concurrent": 2,
        "parameters": {"lr": [0.1, 0.01], "layers": [2, 4]},
    }
    response = api.post("/api/sweeps", body)
    assert response.status_code == 201, response.content
    sweep = response.json()
    assert len(sweep["experiments"]) == 4 and sweep["counts"]["total"] == 4
    assert sweep["max_concurrent"] == 2 and sweep["base"] == "exp-one"
    assert api.get("/api/sweeps/lr-sweep").json()["name"] == "lr-sweep"
    assert api.get(f"/api/sweeps/{sweep['id']}").json()["name"] == "lr-sweep"
    assert api.get("/api/sweeps").json()["count"] == 1
    assert api.post("/api/sweeps", body).status_code == 409


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "s", "base": "nope", "parameters": {"lr": [1]}}, 400, "base"),
        ({"name": "s", "base": "exp-one", "parameters": {}}, 400, "parameters"),
        ({"name": "s", "base": "exp-one", "parameters": {"lr": []}}, 400, "parameters"),
        ({"name": "s", "base": "exp-one", "kind": "grid", "parameters": {"lr": {"min": 0, "max": 1}}}, 400, "parameters"),
        ({"name": "s", "base": "exp-one", "kind": "random", "parameters": {"lr": [1]}}, 422, None),
        ({"name": "s", "base": "exp-one", "kind": "random", "samples": 2, "parameters": {"lr": {"min": 2, "max": 1}}}, 400, "parameters"),
        ({"name": "S S", "base": "exp-one", "parameters": {"lr": [1]}}, 422, "name"),
        ({"name": "s", "base": "exp-one", "parameters": {"lr": [1]}, "max_concurrent": 0}, 422, "max_concurrent"),
    ],
)
def test_create_sweep_bad_input(api, experiment, body, status, field):
    response = api.post("/api/sweeps", body)
    assert response.status_code == status, response.content
    if field:
        assert response.json()["field"] == field
    assert not Sweep.objects.exists()
    assert Experiment.objects.count() == 1


def test_create_sweep_refused_by_the_flag_schema(api, experiment):
    FlagSchemaFactory(path="lr", type="float", source="model")
    response = api.post("/api/sweeps", {"name": "s", "base": "exp-one", "parameters": {"lr": [0.1, "fast"]}})
    assert response.status_code == 400
    assert response.json()["field"] == "flags" and "lr" in response.json()["message"]
    assert not Sweep.objects.exists()


def test_sweep_not_found(api, db):
    assert api.get("/api/sweeps/nope").status_code == 404
    assert api.post("/api/sweeps/nope/state", {"desired_state": "STOPPED"}).status_code == 404
    assert api.post("/api/sweeps/nope/rerun-failed").status_code == 404


def test_sweep_state_and_rerun(api, experiment):
    api.post("/api/sweeps", {"name": "sw", "base": "exp-one", "parameters": {"lr": [1, 2, 3]}})
    assert api.post("/api/sweeps/sw/state", {"desired_state": "RUNNING"}).json() == {"changed": 3}
    assert api.post("/api/sweeps/sw/state", {"desired_state": "BOGUS"}).status_code == 422
    Experiment.objects.filter(sweep__name="sw", flags__lr=2).update(phase="FAILED")
    assert api.post("/api/sweeps/sw/rerun-failed").json() == {"changed": 1}


def test_openapi_and_docs_are_served(client, db):
    schema = client.get("/api/openapi.json").json()
    for path in ("/api/experiments", "/api/experiments/{id}/state", "/api/jobs/{id}/logs", "/api/sweeps/{id}"):
        assert path in schema["paths"]
    assert client.get("/api/docs").status_code == 200


def test_a_repeated_query_parameter_is_refused(db):
    from django.test import Client

    from experiments.models import ApiToken
    from tests.factories import UserFactory

    _, key = ApiToken.issue(UserFactory(username="twice"))
    response = Client().get("/api/experiments?q=a&q=b", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 422
    assert response.json()["field"] == "q"
    assert Client().get("/api/experiments?q=a&q=b").status_code == 401
