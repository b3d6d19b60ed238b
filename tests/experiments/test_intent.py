"""experiments.intent: the one door for every change of intent, and every surface going through it."""

import json

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from experiments import intent
from experiments.models import Event, Experiment, Job
from tests.factories import ExperimentFactory, JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def actor(owner):
    return intent.Actor(owner, "user")


def kinds(experiment):
    return list(Event.objects.filter(experiment=experiment).order_by("id").values_list("kind", flat=True))


def reconciled(messages):
    """Experiment ids the enqueued tasks will reconcile."""
    ids = set()
    for task, args in messages:
        if task == "experiments.tasks.reconcile_experiment":
            ids.add(args[0])
        elif task == "experiments.tasks.reconcile_experiments":
            ids.update(args[0])
    return ids


def test_create_records_the_creation_and_starts_a_run_only_when_running(
    actor, enqueued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        stopped = intent.create(actor, Experiment(name="made", command="echo hi", backend="local"))
        running = intent.create(
            actor, Experiment(name="made-running", command="echo hi", backend="local"), desired_state="RUNNING"
        )
    assert (stopped.generation, stopped.run_number, stopped.created_by.username) == (1, 0, "owner")
    assert (running.run_number, running.desired_state) == (1, "RUNNING")
    event = Event.objects.get(experiment=running)
    assert (event.kind, event.actor, event.user.username) == ("created", "user", "owner")
    assert "RUNNING" in event.message
    assert reconciled(enqueued()) == {stopped.pk, running.pk}


def test_create_refuses_a_taken_name_and_bad_input_writing_nothing(actor):
    ExperimentFactory(name="taken")
    with pytest.raises(ValidationError) as info:
        intent.create(actor, Experiment(name="taken", command="echo", backend="local"))
    assert "already exists" in info.value.message_dict["name"][0]
    with pytest.raises(ValidationError) as info:
        intent.create(actor, Experiment(name="bad-flags", command="echo", backend="local", flags={"a b": 1}))
    assert "flags" in info.value.message_dict
    assert Experiment.objects.count() == 1 and not Event.objects.exists()


def test_edit_bumps_the_generation_for_a_spec_change_only(actor, enqueued, django_capture_on_commit_callbacks):
    exp = ExperimentFactory(name="edited")
    with django_capture_on_commit_callbacks(execute=True):
        result = intent.edit(actor, exp, {"description": "words", "tags": ["a"]})
    assert result.changed == ["description", "tags"] and result.spec_changed == []
    assert exp.generation == 1 and enqueued() == []  # nothing the reconciler cares about
    with django_capture_on_commit_callbacks(execute=True):
        result = intent.edit(actor, exp, {"command": "echo v2", "flags": {"lr": 0.1}, "description": "words"})
    assert sorted(result.spec_changed) == ["command", "flags"]
    exp.refresh_from_db()
    assert exp.generation == 2
    spec = Event.objects.get(experiment=exp, kind="spec")
    assert spec.data == {"fields": ["command", "flags"], "generation": 2}
    assert reconciled(enqueued()) == {exp.pk}
    # The same values again change nothing and write nothing.
    assert intent.edit(actor, exp, {"command": "echo v2"}).changed == []
    assert kinds(exp) == ["edit", "spec"]


def test_edit_refuses_status_fields_and_bad_values_changing_nothing(actor):
    exp = ExperimentFactory(name="strict", command="echo 1")
    with pytest.raises(ValidationError):
        intent.edit(actor, exp, {"phase": "RUNNING"})
    with pytest.raises(ValidationError):
        intent.edit(actor, exp, {"command": "echo 2", "num_nodes": 4})  # the local backend runs on one node
    exp.refresh_from_db()
    assert (exp.command, exp.generation) == ("echo 1", 1) and not Event.objects.exists()


def test_a_spec_change_under_a_running_job_waits_for_a_restart_unless_asked(actor):
    exp = ExperimentFactory(name="busy", desired_state="RUNNING", run_number=1)
    job = JobFactory(experiment=exp, attempt=1, status="RUNNING", run_number=1)
    result = intent.edit(actor, exp, {"command": "echo new"})
    assert result.running_old_spec == job and not result.restarted and exp.run_number == 1
    result = intent.edit(actor, exp, {"command": "echo newer"}, restart=True)
    assert result.restarted and Experiment.objects.get(pk=exp.pk).run_number == 2


def test_desired_state_changes_start_runs_and_are_audited_once(actor, enqueued, django_capture_on_commit_callbacks):
    exp = ExperimentFactory(name="runs", failure_count=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert intent.set_desired_state(actor, exp, "RUNNING")
        assert not intent.set_desired_state(actor, exp, "RUNNING")  # no change, no event
        intent.set_desired_state(actor, exp, "STOPPED")
        intent.set_desired_state(actor, exp, "RUNNING")
    exp.refresh_from_db()
    assert (exp.run_number, exp.failure_count, exp.generation) == (2, 0, 1)
    assert list(Event.objects.filter(experiment=exp).order_by("id").values_list("message", flat=True)) == [
        "Desired state STOPPED → RUNNING",
        "Desired state RUNNING → STOPPED",
        "Desired state STOPPED → RUNNING",
    ]
    assert reconciled(enqueued()) == {exp.pk}
    with pytest.raises(ValidationError):
        intent.set_desired_state(actor, exp, "PAUSED")


def test_many_state_changes_are_sent_as_few_tasks(actor, enqueued, django_capture_on_commit_callbacks):
    experiments = [ExperimentFactory(name=f"many-{i}") for i in range(45)]
    with django_capture_on_commit_callbacks(execute=True):
        assert intent.set_desired_state_many(actor, experiments, "RUNNING") == 45
    messages = enqueued()
    assert len(messages) == 3  # batches of 20
    assert reconciled(messages) == {e.pk for e in experiments}


def test_restart_starts_a_new_run(actor):
    exp = ExperimentFactory(name="again", desired_state="STOPPED", run_number=3)
    intent.restart(actor, exp)
    exp.refresh_from_db()
    assert (exp.desired_state, exp.run_number) == ("RUNNING", 4)
    assert Event.objects.get(experiment=exp).kind == "restart"


def test_cancel_job_is_a_request_the_reconciler_carries_out(actor, local_root):
    from experiments.reconciler import reconcile

    exp = ExperimentFactory(name="cancel-me", command="sleep 30")
    intent.set_desired_state(actor, exp, "RUNNING")
    reconcile(exp.pk)
    job = exp.jobs.get()
    assert job.is_active
    assert intent.cancel_job(actor, job)
    assert Job.objects.get(pk=job.pk).is_active  # nothing was cancelled yet: the worker does it
    outcome = reconcile(exp.pk)
    assert "cancel" in outcome.actions
    job.refresh_from_db()
    exp.refresh_from_db()
    assert job.status == "CANCELLED" and exp.desired_state == "RUNNING" and exp.phase == "STOPPED"
    assert exp.jobs.count() == 1  # not relaunched for it
    assert not intent.cancel_job(actor, job)


def test_clone_and_delete(actor):
    source = ExperimentFactory(name="src", flags={"lr": 0.1}, tags=["a"], desired_state="RUNNING")
    copy = intent.clone(actor, source)
    assert (copy.name, copy.flags, copy.tags, copy.desired_state) == ("src-copy", {"lr": 0.1}, ["a"], "STOPPED")
    assert intent.clone(actor, source).name == "src-copy-2"
    JobFactory(experiment=source, attempt=1, status="RUNNING")
    deleted, kept = intent.delete(actor, [source, copy])
    assert (deleted, kept) == (["src-copy"], ["src"])
    event = Event.objects.get(kind="delete")
    assert (event.message, event.user.username, event.experiment) == ("Deleted experiment src-copy", "owner", None)


# --- every surface goes through intent ------------------------------------------------------------

FORM = {
    "description": "",
    "flag_style": "plain",
    "backend": "local",
    "num_nodes": "1",
    "restart_policy": "never",
    "max_restarts": "3",
    "tags": "",
    "envs": "",
    "desired_state": "STOPPED",
}


def through_form(client, owner):
    client.force_login(owner)
    data = {**FORM, "name": "via-form", "command": "echo 1"}
    assert client.post(reverse("experiments:create"), data).status_code == 302
    exp = Experiment.objects.get(name="via-form")
    yield exp
    assert client.post(reverse("experiments:edit", args=[exp.name]), {**data, "command": "echo 2"}).status_code == 302
    yield exp
    assert client.post(reverse("experiments:set_state", args=[exp.name]), {"state": "RUNNING"}).status_code == 302
    yield exp


def through_admin(client, owner):
    admin = UserFactory(username="boss", is_staff=True, is_superuser=True)
    client.force_login(admin)
    data = {
        **FORM, "name": "via-admin", "command": "echo 1", "flags": "{}", "tags": "[]", "envs": "{}",
        "jobs-TOTAL_FORMS": "0", "jobs-INITIAL_FORMS": "0",
    }  # fmt: skip
    assert client.post(reverse("admin:experiments_experiment_add"), data).status_code == 302
    exp = Experiment.objects.get(name="via-admin")
    yield exp
    url = reverse("admin:experiments_experiment_change", args=[exp.pk])
    assert client.post(url, {**data, "command": "echo 2"}).status_code == 302
    yield exp
    changelist = reverse("admin:experiments_experiment_changelist")
    assert client.post(changelist, {"action": "set_running", "_selected_action": [exp.pk]}).status_code == 302
    yield exp


def through_api(client, owner):
    from experiments.models import ApiToken

    headers = {"Authorization": f"Bearer {ApiToken.issue(owner)[1]}"}
    body = {"name": "via-api", "command": "echo 1", "backend": "local"}
    response = client.post("/api/experiments", json.dumps(body), content_type="application/json", headers=headers)
    assert response.status_code == 201, response.content
    exp = Experiment.objects.get(name="via-api")
    yield exp
    patch = json.dumps({"command": "echo 2"})
    response = client.patch("/api/experiments/via-api", patch, content_type="application/json", headers=headers)
    assert response.status_code == 200, response.content
    yield exp
    state = json.dumps({"desired_state": "RUNNING"})
    response = client.post("/api/experiments/via-api/state", state, content_type="application/json", headers=headers)
    assert response.status_code == 200, response.content
    yield exp


def through_sweep(client, owner):
    from experiments import sweeps

    client.force_login(owner)
    base = ExperimentFactory(name="base", command="echo 1")
    sweep = sweeps.create_sweep(
        intent.Actor(owner, "user"), name="sw", base=base, kind="grid", parameters={"lr": [0.1]}
    )
    exp = sweep.experiments.get()
    yield exp
    data = {
        **FORM,
        "name": exp.name,
        "command": "echo 2",
        "flag-a-key": "lr",
        "flag-a-type": "float",
        "flag-a-value": "0.1",
    }
    assert client.post(reverse("experiments:edit", args=[exp.name]), data).status_code == 302
    yield exp
    assert client.post(reverse("experiments:sweep_set_state", args=["sw"]), {"state": "RUNNING"}).status_code == 302
    yield exp


@pytest.mark.parametrize("surface", [through_form, through_admin, through_api, through_sweep])
def test_every_surface_changes_intent_the_same_way(
    surface, client, owner, enqueued, django_capture_on_commit_callbacks
):
    steps = surface(client, owner)
    expected = [
        (["created"], 1, 0),
        (["created", "spec"], 2, 0),
        (["created", "spec", "desired_state"], 2, 1),
    ]
    for wanted_kinds, generation, run_number in expected:
        seen = len(enqueued())
        with django_capture_on_commit_callbacks(execute=True):
            exp = next(steps)
        exp.refresh_from_db()
        assert kinds(exp) == wanted_kinds
        assert (exp.generation, exp.run_number) == (generation, run_number)
        assert exp.pk in reconciled(enqueued()[seen:])
    assert exp.desired_state == "RUNNING" and exp.command == "echo 2"
