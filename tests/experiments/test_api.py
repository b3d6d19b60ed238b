"""The REST API: every endpoint authorised, unauthorised, with bad input and not found."""

import json

import pytest
from django.test import Client

from experiments.models import ApiToken, Event, Experiment, Sweep
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
            return client.post(
                path,
                json.dumps(body) if body is not None else "",
                content_type="application/json",
                headers=self.headers,
            )

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
    response = client.post(
        "/api/experiments/exp-one/state", {"desired_state": "TERMINATED"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]
    from django.middleware.csrf import _get_new_csrf_string

    csrf = _get_new_csrf_string()
    client.cookies["csrftoken"] = csrf
    response = client.post(
        "/api/experiments/exp-one/state",
        {"desired_state": "TERMINATED"},
        content_type="application/json",
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


def _names(api, **params):
    response = api.get("/api/experiments", **params)
    assert response.status_code == 200, response.content
    return [e["name"] for e in response.json()["items"]]


def test_list_experiments_filters_as_the_page_does(api, db):
    ExperimentFactory(name="a-running", desired_state="RUNNING", phase="RUNNING", tags=["team:x"], starred=True)
    ExperimentFactory(name="b-stopped", phase="STOPPED", backend="skypilot", description="about resnet")
    assert _names(api, desired="RUNNING") == ["a-running"]
    assert _names(api, state="STOPPED") == ["b-stopped"]
    assert _names(api, backend="skypilot") == ["b-stopped"]
    assert _names(api, tag="team:x") == ["a-running"]
    assert _names(api, starred="true") == ["a-running"]
    assert _names(api, q="resnet") == ["b-stopped"]  # the description, as on the page
    assert _names(api, sort="name") == ["a-running", "b-stopped"]
    assert _names(api, sort="-name") == ["b-stopped", "a-running"]
    for bad in ({"desired": "SIDEWAYS"}, {"state": "NAPPING"}, {"backend": "mainframe"}, {"sort": "size"}):
        response = api.get("/api/experiments", **bad)
        assert response.status_code == 422, bad
        assert response.json()["field"] == next(iter(bad))
    assert api.get("/api/experiments", q="x" * 201).status_code == 422


def test_list_experiments_keeps_the_old_filter_names(api, db):
    ExperimentFactory(name="a-running", desired_state="RUNNING", phase="RUNNING")
    ExperimentFactory(name="b-stopped", phase="STOPPED")
    assert _names(api, desired_state="RUNNING") == ["a-running"]
    assert _names(api, phase="STOPPED") == ["b-stopped"]
    assert _names(api, phase="stopped") == ["b-stopped"]  # the old name was case-insensitive
    assert _names(api, phase="STOPPED", state="RUNNING") == ["a-running"]  # the new name wins
    assert api.get("/api/experiments", desired_state="SIDEWAYS").status_code == 422
    parameters = {p["name"]: p for p in _openapi()["paths"]["/api/experiments"]["get"]["parameters"]}
    assert parameters["phase"]["deprecated"] and parameters["desired_state"]["deprecated"]
    assert "state" in parameters["phase"]["schema"]["description"]


def _openapi():
    """The schema /api/openapi.json serves (to a user or a token), without a request or a database."""
    from ninja.responses import NinjaJSONEncoder

    from experiments.api import api as ninja_api

    return json.loads(json.dumps(ninja_api.get_openapi_schema(), cls=NinjaJSONEncoder))


def test_create_experiment(api, owner):
    response = api.post(
        "/api/experiments", {"name": "new-one", "command": "python train.py", "flags": {"lr": 0.01, "name": "x y"}}
    )
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
    response = api.post(
        "/api/experiments", {"name": "ok", "command": "echo", "flags": {"trainer.lr": "0.5", "trainer.amp": "yes"}}
    )
    assert response.status_code == 201
    assert response.json()["flags"] == {"trainer.lr": 0.5, "trainer.amp": True}
    assert response.json()["unknown_flags"] == []


def test_create_duplicate_is_409(api, experiment):
    response = api.post("/api/experiments", {"name": "exp-one", "command": "echo"})
    assert response.status_code == 409
    assert response.json()["field"] == "name"


def test_malformed_json_is_400(client, token, db):
    response = client.post(
        "/api/experiments", "{nope", content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )
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


def test_patch_desired_state_goes_through_intent(api, experiment):
    response = api.patch("/api/experiments/exp-one", {"desired_state": "RUNNING"})
    assert response.status_code == 200
    experiment.refresh_from_db()
    assert experiment.desired_state == "RUNNING" and experiment.run_number == 1
    assert experiment.events.filter(kind=Event.Kind.DESIRED_STATE, actor="api").exists()


def test_patch_bad_input(api, experiment):
    assert api.patch("/api/experiments/exp-one", {"num_nodes": -1}).status_code == 422
    response = api.patch("/api/experiments/exp-one", {"command": None})
    assert response.status_code == 422 and response.json()["field"] == "command"
    assert api.patch("/api/experiments/nope", {"command": "x"}).status_code == 404
    experiment.refresh_from_db()
    assert experiment.command == "echo hello" and experiment.generation == 1


@pytest.mark.parametrize("body", [[], ["command"], "python x.py", None, 3, True])
def test_patch_with_a_body_that_is_not_an_object_is_422(api, experiment, body):
    response = api.patch("/api/experiments/exp-one", body)
    assert response.status_code == 422, response.content
    assert response.json()["message"] == "The body must be a JSON object."
    assert not experiment.events.exists()


def test_patch_may_clear_what_is_nullable(api, experiment):
    assert api.patch("/api/experiments/exp-one", {"disk_size": 100, "autostop_minutes": 5}).status_code == 200
    body = api.patch("/api/experiments/exp-one", {"disk_size": None, "autostop_minutes": None}).json()
    assert body["disk_size"] is None and body["autostop_minutes"] is None


def test_guardrails_are_set_and_cleared_through_the_api(api, experiment):
    body = api.patch(
        "/api/experiments/exp-one",
        {"max_cost": 50, "max_runtime_minutes": 120, "limit_action": "TERMINATED", "stall_minutes": 15},
    ).json()
    assert (body["max_cost"], body["max_runtime_minutes"], body["limit_action"], body["stall_minutes"]) == (
        50.0,
        120,
        "TERMINATED",
        15,
    )
    experiment.refresh_from_db()
    assert experiment.generation == 1  # a guardrail is no spec change: the job is not out of date
    assert api.patch("/api/experiments/exp-one", {"max_cost": 0}).status_code == 422
    assert api.patch("/api/experiments/exp-one", {"stall_action": "explode"}).status_code == 422
    assert api.patch("/api/experiments/exp-one", {"max_cost": None}).json()["max_cost"] is None


def test_the_schema_is_nullable_only_where_the_server_takes_null():
    schemas = _openapi()["components"]["schemas"]
    for name in ("ExperimentIn", "ExperimentPatch"):
        nullable = {
            key
            for key, prop in schemas[name]["properties"].items()
            if {"type": "null"} in prop.get("anyOf", []) or "default" in prop and prop["default"] is None
        }
        assert nullable == {"disk_size", "autostop_minutes", "max_cost", "max_runtime_minutes", "stall_minutes"}, name
    patch = schemas["ExperimentPatch"]
    assert not patch.get("required") and "name" not in patch["properties"]
    assert set(patch["properties"]) == set(schemas["ExperimentIn"]["properties"]) - {"name"}
    assert patch["properties"]["num_nodes"]["minimum"] == 1  # the constraints carry over


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"num_nodes": "3"}, "num_nodes"),
        ({"num_nodes": True}, "num_nodes"),
        ({"num_nodes": 2.0}, "num_nodes"),
        ({"use_spot": 1}, "use_spot"),
        ({"use_spot": "true"}, "use_spot"),
        ({"tags": "a,b"}, "tags"),
        ({"accelerators": "x" * 101}, "accelerators"),
        ({"command": ""}, "command"),
        ({"max_restarts": 10001}, "max_restarts"),
        ({"desired_state": "running"}, "desired_state"),
    ],
)
def test_json_types_are_strict(api, experiment, body, field):
    for method, path in (("patch", "/api/experiments/exp-one"), ("post", "/api/experiments")):
        response = getattr(api, method)(path, {"name": "strict", "command": "echo", **body})
        assert response.status_code == 422, (method, response.content)
        assert response.json()["field"].startswith(field)


def test_non_finite_numbers_are_refused(client, token, experiment):
    for raw in ('{"flags": {"lr": NaN}}', '{"flags": {"lr": Infinity}}', '{"envs": {"X": -Infinity}}'):
        response = client.patch(
            "/api/experiments/exp-one",
            raw,
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 422, raw


def test_a_bad_flag_name_gets_the_forms_words(api, experiment):
    words = "Flag name 'x y' is not valid: start with a letter or _, then letters, digits, _ . or -."
    for method, path, body in (
        ("post", "/api/experiments", {"name": "ok", "command": "echo", "flags": {"x y": 1}}),
        ("patch", "/api/experiments/exp-one", {"flags": {"x y": 1}}),
        ("post", "/api/experiments/exp-one/flags", {"flags": {"x y": 1}}),
    ):
        response = getattr(api, method)(path, body)
        assert response.status_code == 422
        assert response.json()["errors"][0]["message"] == words
        assert response.json()["message"].endswith(words)
    assert api.patch("/api/experiments/exp-one", {"flags": {"lr\n": 1}}).status_code == 422


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


def test_cancel_asks_the_reconciler_and_calls_no_backend(api, experiment, local_root):
    # A local job whose process does not exist: had the API called the backend, it would fail or wait.
    job = JobFactory(experiment=experiment, status="RUNNING", sky_job_id=None, cluster_name="sd-exp-one")
    response = api.post(f"/api/jobs/{job.pk}/cancel")
    assert response.status_code == 202, response.content
    assert response.json()["message"] == f"Cancel of {job.name} requested."
    assert response.json()["job"]["status"] == "RUNNING" and response.json()["job"]["cancel_requested_at"]
    job.refresh_from_db()
    assert job.status == "RUNNING" and job.cancel_requested_at is not None
    event = experiment.events.get(kind=Event.Kind.CANCEL)
    assert event.actor == "api" and event.job == job
    # Asking again while it is still active is the same request: no second Event.
    assert api.post(f"/api/jobs/{job.name}/cancel").status_code == 202
    assert experiment.events.filter(kind=Event.Kind.CANCEL).count() == 1


def test_cancel_of_a_finished_job_is_409(api, experiment):
    job = JobFactory(experiment=experiment, status="SUCCEEDED")
    response = api.post(f"/api/jobs/{job.name}/cancel")
    assert response.status_code == 409
    assert "not active (it is SUCCEEDED)" in response.json()["message"]
    assert api.post("/api/jobs/424242/cancel").status_code == 404


def test_job_logs_read_skydecks_copy(api, experiment, local_root):
    log = local_root / ".logs" / "exp-one-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("hello\nworld\n")
    job = JobFactory(experiment=experiment, status="SUCCEEDED", log_path=str(log))
    body = api.get(f"/api/jobs/{job.pk}/logs").json()
    assert body == {"job": job.pk, "text": "hello\nworld\n", "offset": 12, "complete": True}
    body = api.get(f"/api/jobs/{job.pk}/logs", offset=6).json()
    assert body["text"] == "world\n"
    assert api.get(f"/api/jobs/{job.pk}/logs", offset=-5).status_code == 422
    assert api.get(f"/api/jobs/{job.pk}/logs", offset="x").status_code == 422
    assert api.get("/api/jobs/nope/logs").status_code == 404


def test_job_logs_are_not_complete_while_the_job_runs(api, experiment, local_root):
    log = local_root / ".logs" / "exp-one-2.log"
    log.parent.mkdir(parents=True)
    log.write_text("step 1\n")
    job = JobFactory(experiment=experiment, status="RUNNING", log_path=str(log))
    body = api.get(f"/api/jobs/{job.pk}/logs").json()
    assert body["text"] == "step 1\n" and body["complete"] is False


def test_job_logs_outside_skydecks_folders_are_not_read(api, experiment, tmp_path, local_root):
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not yours")
    job = JobFactory(experiment=experiment, status="SUCCEEDED", log_path=str(secret))
    body = api.get(f"/api/jobs/{job.pk}/logs").json()
    assert body["text"] == "" and body["complete"] is True


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


def test_health_asks_the_database(api, db):
    from django.db import OperationalError, connection

    def refuse_the_check(execute, sql, params, many, context):
        if sql == "SELECT 1":
            raise OperationalError("the database is gone")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_the_check):
        response = api.get("/api/health")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "database": False, "loops": [], "backends": []}


def test_flag_schemas(api, db):
    FlagSchemaFactory(namespace="Train", path="trainer.optimizer.lr", type="float", description="learning rate")
    FlagSchemaFactory(namespace="Train", path="model.layers", type="integer")
    FlagSchemaFactory(namespace="Other", path="lr_warmup", type="integer")
    body = api.get("/api/flag-schemas", q="lr").json()
    # Ranked as the typeahead ranks them: a path that starts with the query first.
    assert [r["path"] for r in body["items"]] == ["lr_warmup", "trainer.optimizer.lr"]
    assert [r["path"] for r in api.get("/api/flag-schemas", q="lr", namespace="Train").json()["items"]] == [
        "trainer.optimizer.lr"
    ]
    assert api.get("/api/flag-schemas", namespace="Train").json()["count"] == 2
    assert api.get("/api/flag-schemas").json()["count"] == 3
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
    from tests.support import use_broker

    with use_broker("redis://127.0.0.1:9/0"):  # nothing listens on port 9
        response = api.post("/api/refresh")
    assert response.status_code == 503
    assert response.json()["message"]


# --- sweeps -------------------------------------------------------------------------------------


def test_create_and_read_a_sweep(api, experiment):
    body = {
        "name": "lr-sweep",
        "base": "exp-one",
        "kind": "grid",
        "max_concurrent": 2,
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
        (
            {"name": "s", "base": "exp-one", "kind": "grid", "parameters": {"lr": {"min": 0, "max": 1}}},
            400,
            "parameters",
        ),
        ({"name": "s", "base": "exp-one", "kind": "random", "parameters": {"lr": [1]}}, 422, None),
        (
            {
                "name": "s",
                "base": "exp-one",
                "kind": "random",
                "samples": 2,
                "parameters": {"lr": {"min": 2, "max": 1}},
            },
            400,
            "parameters",
        ),
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


def test_openapi_and_docs_are_served(owner_client):
    schema = owner_client.get("/api/openapi.json").json()
    for path in ("/api/experiments", "/api/experiments/{id}/state", "/api/jobs/{id}/logs", "/api/sweeps/{id}"):
        assert path in schema["paths"]
    assert schema == _openapi()
    assert owner_client.get("/api/docs").status_code == 200


def test_a_repeated_query_parameter_is_refused(db):
    from django.test import Client

    from experiments.models import ApiToken
    from tests.factories import UserFactory

    _, key = ApiToken.issue(UserFactory(username="twice"))
    response = Client().get("/api/experiments?q=a&q=b", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 422
    assert response.json()["field"] == "q"
    assert Client().get("/api/experiments?q=a&q=b").status_code == 401


# --- answers, limits and the one write path --------------------------------------------------------

EXPERIMENT_KEYS = {
    "id", "name", "description", "command", "flags", "flag_style", "accelerators", "num_nodes", "cpus", "memory",
    "infra", "use_spot", "disk_size", "image_id", "setup", "envs", "workdir", "autostop_minutes", "managed",
    "backend", "restart_policy", "max_restarts", "tags", "sweep", "starred", "desired_state", "generation",
    "observed_generation", "phase", "status_reason", "status_message", "failure_count", "next_attempt_at",
    "last_reconciled_at", "created_at", "updated_at", "url",
}  # fmt: skip
JOB_KEYS = {
    "id", "experiment", "attempt", "run_number", "generation", "backend", "name", "command", "flags", "resources",
    "cluster_name", "sky_job_id", "launch_request_id", "status", "created_at", "submitted_at", "started_at",
    "ended_at", "exit_code", "failure_kind", "failure_reason", "error_message", "log_path", "cost", "url",
    "cancel_requested_at",  # new with cancel as a request
}  # fmt: skip


def test_answers_keep_their_keys_and_types(api, experiment):
    from clusters.models import Cluster

    job = JobFactory(experiment=experiment, status="RUNNING")
    Cluster.objects.create(name="sd-exp-one", backend="local", status="UP")
    FlagSchemaFactory(path="lr", type="float", default=0.1)
    SweepFactory(name="sw", base=experiment)
    detail = api.get("/api/experiments/exp-one").json()
    # Every key of before is still there, with its type (new fields may join).
    assert set(detail) >= EXPERIMENT_KEYS | {"unknown_flags", "out_of_date", "active_job", "last_job"}
    assert set(detail["active_job"]) >= JOB_KEYS and detail["active_job"]["experiment"] == "exp-one"
    assert detail["sweep"] is None and detail["tags"] == [] and detail["disk_size"] is None
    assert detail["url"] == "/experiments/exp-one/" and detail["active_job"]["id"] == job.pk
    assert set(api.get("/api/experiments").json()["items"][0]) >= EXPERIMENT_KEYS
    assert not {"run_number", "created_by", "claimed_by", "reconciled_run"} & set(detail)  # bookkeeping stays in
    status = api.get("/api/experiments/exp-one/status").json()
    assert set(status) >= {
        "name", "desired_state", "phase", "status_reason", "status_message", "in_sync", "generation",
        "observed_generation", "out_of_date", "failure_count", "next_attempt_at", "last_reconciled_at",
        "active_job", "last_job", "cluster",
    }  # fmt: skip
    assert status["cluster"]["owned"] is True and status["in_sync"] is False
    cluster_keys = {"id", "name", "backend", "status", "resources", "num_nodes", "infra", "launched_at"}
    cluster_keys |= {"last_seen_at", "autostop", "hourly_cost", "total_cost", "status_message", "owned"}
    assert set(status["cluster"]) >= cluster_keys
    schema = api.get("/api/flag-schemas").json()["items"][0]
    assert schema["default"] == 0.1 and set(schema) >= {
        "id", "namespace", "path", "type", "type_name", "default", "choices", "description", "required", "source"
    }  # fmt: skip
    sweep = api.get("/api/sweeps/sw").json()
    assert sweep["base"] == "exp-one" and sweep["counts"]["total"] == 0 and sweep["experiments"] == []
    assert set(sweep) >= {
        "id", "name", "description", "base", "kind", "parameters", "samples", "seed", "max_concurrent",
        "created_at", "url", "counts", "experiments",
    }  # fmt: skip


def test_the_answers_schema_is_as_strict_as_the_columns():
    schemas = _openapi()["components"]["schemas"]
    experiment = schemas["ExperimentOut"]
    assert set(experiment["required"]) >= EXPERIMENT_KEYS
    nullable = {k for k, v in experiment["properties"].items() if {"type": "null"} in v.get("anyOf", [])}
    assert nullable & EXPERIMENT_KEYS == {
        "sweep",
        "disk_size",
        "autostop_minutes",
        "next_attempt_at",
        "last_reconciled_at",
    }
    assert experiment["properties"]["flags"]["type"] == "object" and experiment["properties"]["tags"]["type"] == "array"
    job = schemas["JobOut"]
    nullable = {k for k, v in job["properties"].items() if {"type": "null"} in v.get("anyOf", [])}
    assert nullable & JOB_KEYS == {
        "sky_job_id", "submitted_at", "started_at", "ended_at", "exit_code", "cost", "cancel_requested_at"
    }  # fmt: skip


def test_a_body_over_the_upload_limit_is_a_json_413(api, experiment, settings, caplog):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"name": "big", "command": "echo " + "x" * 2000}
    for method, path in (("post", "/api/experiments"), ("patch", "/api/experiments/exp-one")):
        response = getattr(api, method)(path, body)
        assert response.status_code == 413, response.content
        assert response["Content-Type"].startswith("application/json")
        assert "1000 bytes" in response.json()["message"]
    assert not [r for r in caplog.records if r.exc_info]
    assert not Experiment.objects.filter(name="big").exists()


def test_the_api_writes_the_events_intent_writes(api, owner):
    from experiments import intent

    actor = intent.Actor(owner, "api")
    direct = intent.create(actor, Experiment(name="direct", command="echo", backend="local"))
    intent.edit(actor, direct, {"command": "echo 2", "tags": ["a"]})
    intent.edit(actor, direct, {"description": "words", "desired_state": "TERMINATED"})
    intent.edit(actor, direct, {"flags": {"lr": 0.5}})
    intent.set_desired_state(actor, direct, "RUNNING")
    intent.set_desired_state(actor, direct, "RUNNING")  # already: no Event

    assert api.post("/api/experiments", {"name": "via-api", "command": "echo", "backend": "local"}).status_code == 201
    assert api.patch("/api/experiments/via-api", {"command": "echo 2", "tags": ["a"]}).status_code == 200
    assert (
        api.patch("/api/experiments/via-api", {"description": "words", "desired_state": "TERMINATED"}).status_code
        == 200
    )
    assert api.post("/api/experiments/via-api/flags", {"flags": {"lr": 0.5}}).status_code == 200
    assert api.post("/api/experiments/via-api/state", {"desired_state": "RUNNING"}).status_code == 200
    assert api.post("/api/experiments/via-api/state", {"desired_state": "RUNNING"}).status_code == 200

    def history(name):
        events = Event.objects.filter(experiment__name=name).order_by("id")
        return [(e.kind, e.actor, e.user_id, e.message, e.data) for e in events]

    assert history("via-api") == history("direct")
    assert [kind for kind, *_ in history("via-api")] == [
        Event.Kind.CREATED,
        Event.Kind.SPEC,
        Event.Kind.EDIT,
        Event.Kind.DESIRED_STATE,
        Event.Kind.SPEC,
        Event.Kind.DESIRED_STATE,
    ]
    via_api, direct = Experiment.objects.get(name="via-api"), Experiment.objects.get(name="direct")
    assert (via_api.generation, via_api.run_number) == (direct.generation, direct.run_number) == (3, 1)
