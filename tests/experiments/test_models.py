import pytest
from django.core.exceptions import ValidationError

from experiments.models import Experiment
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["new", "bulk", "flags", "preview", "Upper", "-dash", "dash-", "a_b", "x" * 61, ""])
def test_names_that_cannot_have_a_page_are_refused(name):
    with pytest.raises(ValidationError) as info:
        Experiment(name=name, command="true", backend="local").full_clean()
    assert "name" in info.value.message_dict


def test_spec_change_bumps_generation_and_status_change_does_not():
    exp = ExperimentFactory(name="gen")
    assert exp.generation == 1
    exp.flags = {"lr": 0.1}
    exp.save()
    assert exp.generation == 2
    exp.starred = True
    exp.description = "words"
    exp.save()
    assert exp.generation == 2
    exp.set_desired_state("RUNNING")
    assert Experiment.objects.get(pk=exp.pk).generation == 2


def test_set_desired_state_starts_a_new_run_and_audits(owner):
    exp = ExperimentFactory(name="runs")
    assert exp.set_desired_state("RUNNING", user=owner)
    assert not exp.set_desired_state("RUNNING", user=owner)  # no change, no event
    exp.set_desired_state("STOPPED", user=owner)
    exp.set_desired_state("RUNNING", user=owner)
    exp.refresh_from_db()
    assert exp.run_number == 2
    events = list(exp.events.filter(kind="desired_state").order_by("id").values_list("message", "user__username"))
    assert events == [("Desired state STOPPED → RUNNING", "owner"), ("Desired state RUNNING → STOPPED", "owner"),
                      ("Desired state STOPPED → RUNNING", "owner")]
    with pytest.raises(ValidationError):
        exp.set_desired_state("PAUSED")


def test_out_of_date_when_the_active_job_runs_an_older_spec():
    exp = ExperimentFactory(name="ood")
    JobFactory(experiment=exp, attempt=1, status="RUNNING", generation=1)
    assert not exp.out_of_date
    exp.command = "echo v2"
    exp.save()
    assert exp.out_of_date


@pytest.mark.parametrize("tags", [["a b"], ["x" * 51], "notalist", [1]])
def test_bad_tags_are_refused(tags):
    with pytest.raises(ValidationError):
        Experiment(name="tagged", command="true", backend="local", tags=tags).full_clean()


def test_tagged_filter_works_on_every_database():
    ExperimentFactory(name="t1", tags=["nlp", "big"])
    ExperimentFactory(name="t2", tags=["vision"])
    ExperimentFactory(name="t3", tags=["nlp-ish"])
    assert list(Experiment.objects.tagged("nlp").values_list("name", flat=True)) == ["t1"]


def test_any_path_to_running_starts_a_new_run():
    """The form, the admin, the API and plain ORM code all save(): a new run starts there."""
    exp = ExperimentFactory(name="orm-path", desired_state="STOPPED")
    exp = Experiment.objects.get(pk=exp.pk)
    exp.desired_state = "RUNNING"
    exp.failure_count = 2
    exp.save()
    exp = Experiment.objects.get(pk=exp.pk)
    assert (exp.run_number, exp.failure_count) == (1, 0)
    exp.description = "still running"
    exp.save()
    assert Experiment.objects.get(pk=exp.pk).run_number == 1  # no new run without a change of state
    exp.request_restart()
    assert Experiment.objects.get(pk=exp.pk).run_number == 2  # exactly one bump
    exp = Experiment.objects.get(pk=exp.pk)
    exp.set_desired_state("STOPPED")
    exp.set_desired_state("RUNNING")
    assert Experiment.objects.get(pk=exp.pk).run_number == 3


def test_delete_idle_keeps_experiments_with_an_active_job_and_audits_the_rest(owner):
    from experiments.models import Event

    idle = ExperimentFactory(name="idle")
    JobFactory(experiment=idle, attempt=1, status="SUCCEEDED")
    busy = ExperimentFactory(name="busy")
    JobFactory(experiment=busy, attempt=1, status="RUNNING")
    deleted, kept = Experiment.objects.filter(name__in=["idle", "busy"]).delete_idle(user=owner)
    assert (deleted, kept) == (["idle"], ["busy"])
    assert list(Experiment.objects.values_list("name", flat=True)) == ["busy"]
    event = Event.objects.get(kind="delete")
    assert (event.message, event.user, event.experiment) == ("Deleted experiment idle", owner, None)
