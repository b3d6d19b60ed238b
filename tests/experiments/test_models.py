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


@pytest.mark.parametrize("tags", [["a b"], ["x" * 51], "notalist", [1]])
def test_bad_tags_are_refused(tags):
    with pytest.raises(ValidationError):
        Experiment(name="tagged", command="true", backend="local", tags=tags).full_clean()


def test_tagged_filter_works_on_every_database():
    ExperimentFactory(name="t1", tags=["nlp", "big"])
    ExperimentFactory(name="t2", tags=["vision"])
    ExperimentFactory(name="t3", tags=["nlp-ish"])
    assert list(Experiment.objects.tagged("nlp").values_list("name", flat=True)) == ["t1"]


def test_save_never_bumps_generation_or_run():
    """Bumps belong to ``experiments.intent``; a plain save writes what it is given."""
    exp = ExperimentFactory(name="plain")
    exp.flags = {"lr": 0.1}
    exp.desired_state = "RUNNING"
    exp.save()
    exp.refresh_from_db()
    assert (exp.generation, exp.run_number) == (1, 0)


def test_out_of_date_when_the_active_job_runs_an_older_spec():
    exp = ExperimentFactory(name="ood", generation=2)
    JobFactory(experiment=exp, attempt=1, status="RUNNING", generation=1)
    assert exp.out_of_date
    exp.generation = 1
    assert not exp.out_of_date


@pytest.mark.parametrize(
    ("desired", "phase", "finished", "shows_desired"),
    [
        ("RUNNING", "RUNNING", False, False),
        ("RUNNING", "LAUNCHING", False, True),
        ("RUNNING", "SUCCEEDED", True, False),
        ("RUNNING", "FAILED", True, False),
        ("STOPPED", "STOPPED", False, False),
        ("STOPPED", "STOPPING", False, True),
        ("TERMINATED", "SUCCEEDED", False, True),
    ],
)
def test_the_state_says_when_a_run_has_finished(desired, phase, finished, shows_desired):
    exp = Experiment(name="s", desired_state=desired, phase=phase)
    assert (exp.run_finished, exp.shows_desired) == (finished, shows_desired)


def test_local_backend_refuses_what_it_cannot_do():
    with pytest.raises(ValidationError) as info:
        Experiment(name="loc", command="true", backend="local", managed=True, num_nodes=2).full_clean()
    assert set(info.value.message_dict) >= {"managed", "num_nodes"}
