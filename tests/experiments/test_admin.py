import pytest
from django.urls import reverse

from experiments.models import Event, Experiment
from tests.factories import ExperimentFactory, JobFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = UserFactory(username="boss", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


def test_changelist_shows_state_backend_tags_and_last_job(admin_client):
    exp = ExperimentFactory(name="in-admin", tags=["nlp", "big"], desired_state="RUNNING")
    JobFactory(experiment=exp, attempt=1, status="FAILED")
    JobFactory(experiment=exp, attempt=2, status="RUNNING")
    response = admin_client.get(
        reverse("admin:experiments_experiment_changelist"), {"q": "in-admin", "backend": "local"}
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "in-admin" in body and "nlp, big" in body and "#2 RUNNING" in body


def test_bulk_set_desired_state_writes_events(admin_client, django_capture_on_commit_callbacks, enqueued):
    a, b, c = (ExperimentFactory(name=n) for n in ("bulk-a", "bulk-b", "bulk-c"))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:experiments_experiment_changelist"),
            {"action": "set_running", "_selected_action": [a.pk, b.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert "2 experiment(s) set to RUNNING" in response.content.decode()
    assert set(Experiment.objects.filter(desired_state="RUNNING").values_list("name", flat=True)) == {
        "bulk-a",
        "bulk-b",
    }
    assert Experiment.objects.get(pk=c.pk).desired_state == "STOPPED"
    events = Event.objects.filter(kind="desired_state")
    assert events.count() == 2 and set(events.values_list("actor", flat=True)) == {"admin"}
    assert enqueued() == [("experiments.tasks.reconcile_experiments", ([a.pk, b.pk],))]


def test_editing_desired_state_in_the_change_form_is_audited(admin_client):
    exp = ExperimentFactory(name="edit-state")
    url = reverse("admin:experiments_experiment_change", args=[exp.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update(
        {
            "desired_state": "RUNNING",
            "flags": "{}",
            "envs": "{}",
            "tags": "[]",
            "command": "echo hi",
            "jobs-TOTAL_FORMS": "0",
            "jobs-INITIAL_FORMS": "0",
        }
    )
    data.pop("sweep", None)
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    exp.refresh_from_db()
    assert exp.desired_state == "RUNNING" and exp.run_number == 1
    assert Event.objects.filter(experiment=exp, kind="desired_state", actor="admin").exists()
    assert Event.objects.filter(experiment=exp, kind="spec").exists()  # the command changed


def test_jobs_and_events_are_read_only(admin_client):
    job = JobFactory()
    assert admin_client.get(reverse("admin:experiments_job_add")).status_code == 403
    response = admin_client.post(reverse("admin:experiments_job_change", args=[job.pk]), {"status": "FAILED"})
    assert response.status_code == 403
    job.refresh_from_db()
    assert job.status == "SUCCEEDED"
    assert admin_client.get(reverse("admin:experiments_event_add")).status_code == 403


def test_admin_requires_staff(client):
    client.force_login(UserFactory(username="plain"))
    response = client.get(reverse("admin:experiments_experiment_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_create_in_the_admin_with_only_the_spec(admin_client, django_capture_on_commit_callbacks, enqueued):
    data = {
        "name": "from-admin",
        "command": "echo hi",
        "flags": '{"lr": 0.1}',
        "flag_style": "plain",
        "tags": '["a"]',
        "desired_state": "RUNNING",
        "backend": "local",
        "restart_policy": "never",
        "max_restarts": "3",
        "num_nodes": "1",
        "envs": "{}",
        "jobs-TOTAL_FORMS": "0",
        "jobs-INITIAL_FORMS": "0",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:experiments_experiment_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    exp = Experiment.objects.get(name="from-admin")
    assert (exp.flags, exp.tags, exp.run_number, exp.desired_state) == ({"lr": 0.1}, ["a"], 1, "RUNNING")
    assert Event.objects.filter(experiment=exp, kind="created").exists()
    assert enqueued() == [("experiments.tasks.reconcile_experiment", (exp.pk,))]
