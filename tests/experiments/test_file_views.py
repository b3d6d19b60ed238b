"""Files in the dashboard and the API: import a task YAML, download experiments and jobs as one,
export a skydeck.yaml, apply one through the API, and the plan page of a bulk action."""

import json

import pytest
import yaml
from django.contrib.messages.storage.fallback import FallbackStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from django.urls import reverse

from experiments import file_views
from experiments.models import ApiToken, Event, Experiment, Sweep
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db

TASK = """\
name: from-file
resources:
  accelerators: A100:1
  infra: aws
setup: pip install x
run: python train.py lr=0.1
"""


@pytest.fixture
def exp(owner):
    return ExperimentFactory(name="alpha", command="python t.py", flags={"lr": 0.1}, backend="skypilot", infra="aws")


@pytest.fixture
def api(client, owner):
    headers = {"Authorization": f"Bearer {ApiToken.issue(owner)[1]}"}

    class Api:
        def get(self, path, **params):
            return client.get(path, params, headers=headers)

        def post(self, path, body):
            return client.post(path, json.dumps(body), content_type="application/json", headers=headers)

    return Api()


def problems(response):
    return [m.message for m in response.context["form"].non_field_errors().as_data()] if response.context else []


# --- who may ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/experiments/import/", "/experiments/export/", "/experiments/alpha/skypilot.yaml",
     "/experiments/alpha/jobs/1/skypilot.yaml"],
)  # fmt: skip
def test_anonymous_is_sent_to_log_in(client, exp, url):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login") + "?next=")


def test_downloads_are_get_only(owner_client, exp):
    assert owner_client.post(reverse("files:experiment_task", args=["alpha"])).status_code == 405
    JobFactory(experiment=exp, attempt=1)
    assert owner_client.post(reverse("files:job_task", args=["alpha", 1])).status_code == 405


def test_import_and_export_are_pages_not_experiments(exp):
    assert reverse("files:import") == "/experiments/import/"
    assert reverse("files:export") == "/experiments/export/"


# --- import --------------------------------------------------------------------------------------------------


def test_the_import_page(owner_client):
    response = owner_client.get(reverse("files:import"))
    assert response.status_code == 200
    assert b"Import a SkyPilot task" in response.content and b'enctype="multipart/form-data"' in response.content


def test_preview_then_create(owner_client, owner):
    response = owner_client.post(
        reverse("files:import"), {"task": TASK, "backend": "skypilot", "desired_state": "STOPPED"}
    )
    assert response.status_code == 200 and not Experiment.objects.exists()
    page = response.content.decode()
    assert "It makes the experiment <code>from-file</code>" in page
    assert "python train.py lr=0.1" in page and "A100:1" in page
    response = owner_client.post(
        reverse("files:import"), {"task": TASK, "backend": "skypilot", "desired_state": "RUNNING", "create": "1"}
    )
    experiment = Experiment.objects.get(name="from-file")
    assert response.status_code == 302 and response["Location"] == experiment.get_absolute_url()
    assert (experiment.command, experiment.flags, experiment.owner, experiment.desired_state) == (
        "python train.py",
        {"lr": 0.1},
        owner,
        "RUNNING",
    )
    event = Event.objects.get(experiment=experiment, kind="created")
    assert (event.actor, event.user, event.data["file"]) == ("user", owner, "pasted task")


def test_an_upload_is_kept_for_create(owner_client):
    upload = SimpleUploadedFile("train.yaml", TASK.replace("name: from-file\n", "").encode())
    response = owner_client.post(
        reverse("files:import"), {"upload": upload, "backend": "skypilot", "desired_state": "STOPPED"}
    )
    form = response.context["form"]
    assert form["task"].value().startswith("resources:") and form["source"].value() == "train.yaml"
    assert "It makes the experiment <code>train</code>" in response.content.decode()
    owner_client.post(
        reverse("files:import"),
        {"task": form["task"].value(), "source": "train.yaml", "backend": "skypilot", "desired_state": "STOPPED",
         "create": "1"},
    )  # fmt: skip
    assert Event.objects.get(experiment__name="train", kind="created").data["file"] == "train.yaml"


def test_what_cannot_be_imported_is_shown_with_its_line(owner_client):
    bad = TASK + "file_mounts:\n  /data: s3://b\n"
    response = owner_client.post(
        reverse("files:import"), {"task": bad, "backend": "skypilot", "desired_state": "STOPPED", "create": "1"}
    )
    assert response.status_code == 200 and not Experiment.objects.exists()
    assert problems(response)[0].startswith("pasted task line 7: file_mounts: SkyDeck cannot pass file mounts on")
    response = owner_client.post(
        reverse("files:import"), {"task": "", "backend": "skypilot", "desired_state": "STOPPED"}
    )
    assert problems(response) == ["Paste a SkyPilot task YAML, or upload one."]


def test_a_taken_name_is_said_before_and_refused_on_create(owner_client, exp):
    data = {"task": TASK, "name": "alpha", "backend": "skypilot", "desired_state": "STOPPED"}
    response = owner_client.post(reverse("files:import"), data)
    assert "An experiment named alpha exists already" in response.content.decode()
    assert "alpha-2" in response.content.decode()
    response = owner_client.post(reverse("files:import"), {**data, "create": "1"})
    assert response.context["form"].errors["name"] == ["An experiment named 'alpha' already exists."]


# --- export ----------------------------------------------------------------------------------------------------


def test_an_experiment_downloads_as_its_task(owner_client, exp):
    response = owner_client.get(reverse("files:experiment_task", args=["alpha"]))
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="alpha.yaml"'
    assert yaml.safe_load(response.content)["run"] == "python t.py lr=0.1"
    assert owner_client.get(reverse("files:experiment_task", args=["nope"])).status_code == 404


def test_a_job_downloads_as_what_it_ran(owner_client, exp):
    JobFactory(experiment=exp, attempt=3, command="python old.py", resources={"accelerators": "T4:1", "infra": "gcp"})
    response = owner_client.get(reverse("files:job_task", args=["alpha", 3]))
    config = yaml.safe_load(response.content)
    assert response["Content-Disposition"] == 'attachment; filename="sd-alpha-3.yaml"'
    assert (config["name"], config["run"], config["resources"]["accelerators"]) == (
        "sd-alpha-3",
        "python old.py",
        "T4:1",
    )
    assert owner_client.get(reverse("files:job_task", args=["alpha", 9])).status_code == 404


def test_an_experiment_that_cannot_be_a_task_says_why(owner_client, exp):
    Experiment.objects.filter(pk=exp.pk).update(cpus="lots")
    response = owner_client.get(reverse("files:experiment_task", args=["alpha"]), follow=True)
    assert "alpha cannot be written as a SkyPilot task: cpus must be a number" in response.content.decode()


def test_export_the_filtered_or_the_selected(owner_client, owner, other_user):
    ExperimentFactory(name="a", tags=["x"])
    ExperimentFactory(name="b")
    ExperimentFactory(name="theirs", owner=other_user)

    def names(response):
        assert response["Content-Disposition"] == 'attachment; filename="skydeck.yaml"'
        return [e["name"] for e in yaml.safe_load(response.content)["experiments"]]

    assert names(owner_client.get(reverse("files:export"))) == ["a", "b"]  # "Mine", as the list shows by default
    assert names(owner_client.get(reverse("files:export"), {"who": "all"})) == ["a", "b", "theirs"]
    assert names(owner_client.get(reverse("files:export"), {"tag": "x"})) == ["a"]
    b = Experiment.objects.get(name="b")
    assert names(owner_client.post(reverse("files:export"), {"selected": [b.pk]})) == ["b"]
    response = owner_client.post(reverse("files:export"), {"all_matching": "1", "query": "who=all&q=the"})
    assert names(response) == ["theirs"]


# --- the plan page of a bulk action ----------------------------------------------------------------------------


def test_the_bulk_plan_page_says_what_will_happen_and_posts_the_form_again(owner, other_user):
    idle = ExperimentFactory(name="idle", phase="STOPPED")
    running = ExperimentFactory(name="running", desired_state="RUNNING", phase="RUNNING", run_number=1)
    JobFactory(experiment=running, attempt=1, status="RUNNING")
    ExperimentFactory(name="theirs", owner=other_user)
    request = RequestFactory().post(
        "/experiments/bulk/", {"action": "TERMINATED", "selected": ["1", "2"], "query": "q=x"}
    )
    request.user, request.session = owner, {}
    request._messages = FallbackStorage(request)
    experiments = list(Experiment.objects.order_by("name"))
    page = file_views.render_bulk_plan(request, experiments, "TERMINATED", back="/?q=x").content.decode()
    assert "Terminate 3 experiments?" in page
    assert "2 will be torn down" in page and "1 refused" in page
    assert "Cancels attempt 1 (RUNNING), tears down sd-running (its disk is lost)" in page
    assert f'href="{idle.get_absolute_url()}"' in page
    assert '<input type="hidden" name="selected" value="2">' in page and 'name="confirmed" value="1"' in page
    assert f'action="{reverse("experiments:bulk")}"' in page and ">Terminate 2</button>" in page
    page = file_views.render_bulk_plan(request, [running], "RUNNING", back="/").content.decode()
    assert "Nothing to do" in page and "Run 1</button>" not in page and ">Back</a>" in page


# --- the API ---------------------------------------------------------------------------------------------------


def test_api_import(api, owner):
    response = api.post("/api/experiments/import", {"yaml": TASK, "filename": "t.yaml", "desired_state": "RUNNING"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["command"], body["flags"], body["backend"]) == (
        "from-file",
        "python train.py",
        {"lr": 0.1},
        "skypilot",
    )
    event = Event.objects.get(experiment__name="from-file", kind="created")
    assert (event.actor, event.user, event.data["file"]) == ("api", owner, "t.yaml")
    assert api.post("/api/experiments/import", {"yaml": TASK}).status_code == 409


def test_api_import_names_the_line_and_field(api):
    response = api.post("/api/experiments/import", {"yaml": "run: x\nresources:\n  acelerators: A100:1\n", "name": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "resources.acelerators"
    assert body["message"].startswith("task.yaml line 3: resources.acelerators: unknown field")
    assert api.post("/api/experiments/import", {"yaml": 3}).status_code == 422


def test_api_downloads(api, exp):
    response = api.get("/api/experiments/alpha/skypilot.yaml")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(response.content)["name"] == "alpha"
    job = JobFactory(experiment=exp, attempt=1, command="python t.py lr=0.1")
    for ref in (job.pk, "sd-alpha-1"):
        assert yaml.safe_load(api.get(f"/api/jobs/{ref}/skypilot.yaml").content)["name"] == "sd-alpha-1"
    assert api.get("/api/experiments/nope/skypilot.yaml").status_code == 404
    assert "name: alpha" in api.get("/api/export", who="all").content.decode()
    assert api.get("/api/export", desired="NOPE").status_code == 422


APPLY = """\
experiments:
  - name: alpha
    command: python t.py
    flags: {lr: 0.2}
    backend: skypilot
    infra: aws
  - name: fresh
    command: echo hi
    backend: skypilot
    desired_state: RUNNING
"""


def test_api_apply_plans_then_applies_once(api, exp, owner):
    before = (Experiment.objects.count(), Event.objects.count())
    response = api.post("/api/apply", {"file": APPLY, "dry_run": True})
    assert response.status_code == 200
    body = response.json()
    assert (body["dry_run"], body["applied"]) == (True, False)
    assert body["summary"] == {"create": 1, "update": 1, "state": 0, "delete": 0, "unchanged": 0, "refused": 0}
    assert body["plan"][0]["changes"] == [{"field": "flags", "old": {"lr": 0.1}, "new": {"lr": 0.2}}]
    assert body["plan"][1] == {
        "kind": "experiment",
        "name": "fresh",
        "action": "create",
        "changes": [],
        "desired_state": None,
        "message": "desired RUNNING",
        "line": 7,
        "refusal": None,
    }
    assert (Experiment.objects.count(), Event.objects.count()) == before
    response = api.post("/api/apply", {"file": APPLY, "filename": "team.yaml"})
    assert response.json()["applied"] is True
    assert Experiment.objects.get(name="fresh").owner == owner
    assert Event.objects.filter(actor="api", user=owner, data__file="team.yaml").count() == 2
    response = api.post("/api/apply", {"file": APPLY})
    assert (response.json()["applied"], response.json()["message"]) == (False, "Nothing to change.")


def test_api_apply_refuses_what_the_user_may_not_change(api, other_user):
    ExperimentFactory(name="alpha", owner=other_user, command="python t.py", backend="skypilot", infra="aws")
    plan = api.post("/api/apply", {"file": APPLY, "dry_run": True}).json()["plan"]
    assert (plan[0]["action"], plan[0]["refusal"]) == ("refused", "permission")
    assert plan[0]["message"] == "you may not change it (its owner is other): only its owner, its group and staff may."
    response = api.post("/api/apply", {"file": APPLY})
    assert response.status_code == 403 and response.json()["field"] == "alpha"
    assert not Experiment.objects.filter(name="fresh").exists()


def test_api_apply_never_prunes_a_running_experiment(api, exp):
    busy = ExperimentFactory(name="busy")
    JobFactory(experiment=busy, attempt=1, status="RUNNING")
    response = api.post("/api/apply", {"file": APPLY, "prune": True})
    assert response.status_code == 409 and "busy" in response.json()["message"]
    assert Experiment.objects.filter(name="busy").exists() and not Experiment.objects.filter(name="fresh").exists()


def test_api_apply_a_malformed_file(api):
    response = api.post("/api/apply", {"file": "experiments:\n  - name: x\n    comand: echo\n"})
    assert response.status_code == 400
    assert response.json()["message"] == (
        "skydeck.yaml line 3: experiments[0].comand: unknown field: not a field of a SkyDeck experiment "
        "(did you mean 'command'?)."
    )
    response = api.post("/api/apply", {"file": "experiments:\n  - {name: x, command: y, task: t.yaml}\n"})
    assert "a task file can be read only by manage.py apply" in response.json()["message"]
    assert not Experiment.objects.exists() and not Sweep.objects.exists()
