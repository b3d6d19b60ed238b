"""The polls' change marker: one number that every change a page shows moves, and nothing else does."""

import pytest
from django.db import connection
from django.utils import timezone

from clusters.models import Cluster
from experiments import intent, revision
from experiments.models import Event, Experiment, Job
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db


def moves(change):
    before = revision.current()
    change()
    return revision.current() != before


def test_what_a_page_shows_moves_the_revision(owner):
    exp = ExperimentFactory(name="shown")
    job = JobFactory(experiment=exp, attempt=1, status="RUNNING")
    assert moves(lambda: ExperimentFactory(name="another"))
    assert moves(lambda: intent.set_desired_state(intent.Actor(owner), exp, "RUNNING"))
    assert moves(lambda: Experiment.objects.filter(pk=exp.pk).update(phase="RUNNING", status_reason="Running"))
    assert moves(lambda: Job.objects.filter(pk=job.pk).update(status="SUCCEEDED"))
    assert moves(lambda: Event.record(exp, Event.Kind.INFO, "hello"))
    assert moves(lambda: Cluster.objects.create(backend="local", name="sd-shown", status="UP"))
    assert moves(lambda: Cluster.objects.filter(name="sd-shown").update(status="STOPPED"))
    assert moves(lambda: Experiment.objects.filter(pk=exp.pk).delete())


def test_the_control_loops_bookkeeping_does_not(owner):
    exp = ExperimentFactory(name="quiet")
    job = JobFactory(experiment=exp, attempt=1, status="RUNNING")
    Cluster.objects.create(backend="local", name="sd-quiet", status="UP")
    now = timezone.now()
    assert not moves(lambda: Experiment.objects.filter(pk=exp.pk).update(claimed_by="x:1:y", claim_expires_at=now))
    assert not moves(lambda: Experiment.objects.filter(pk=exp.pk).update(last_reconciled_at=now))
    # The reconciler having seen a run is shown ("run 1 finished"), so it counts.
    assert moves(lambda: Experiment.objects.filter(pk=exp.pk).update(reconciled_run=exp.run_number + 1))
    assert not moves(lambda: Job.objects.filter(pk=job.pk).update(log_watched_at=now))
    assert not moves(lambda: Cluster.objects.filter(name="sd-quiet").update(last_seen_at=now))


def test_every_column_of_the_shown_tables_is_either_tracked_or_known_bookkeeping():
    """A new column must be placed on one side (and a migration re-installs the triggers)."""
    from django.apps import apps

    bookkeeping = {
        "experiments_experiment": {"id", "created_by_id", "created_at", "updated_at",
                                   "last_reconciled_at", "claimed_by", "claim_expires_at"},
        "experiments_job": {"id", "experiment_id", "created_at", "log_watched_at"},
        "experiments_sweep": {"id", "created_by_id", "created_at"},
        "clusters_cluster": {"id", "last_seen_at"},
    }  # fmt: skip
    for model in apps.get_models():
        table = model._meta.db_table
        if table in bookkeeping:
            columns = {f.column for f in model._meta.concrete_fields}
            assert columns == set(revision.TRACKED[table]) | bookkeeping[table], table


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the in-flight rule is PostgreSQL's")
def test_a_change_in_flight_when_the_marker_is_read_moves_it_once_committed():
    """The counter moves before its transaction commits: a poll in between must not keep the old page."""
    exp = ExperimentFactory(name="in-flight")
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(  # a second connection, its transaction open until commit()
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432, password=db["PASSWORD"]
    ) as other:
        other.execute("UPDATE experiments_experiment SET phase = 'RUNNING' WHERE id = %s", [exp.pk])
        during = revision.current()  # the page read now still shows the old phase
        assert Experiment.objects.get(pk=exp.pk).phase != "RUNNING"
        other.commit()
    after = revision.current()
    assert after != during
    assert revision.current() == after  # and then it holds still


@pytest.mark.django_db(transaction=True)
def test_the_marker_keeps_moving_after_its_counter_row_is_gone():
    """A flush (``manage.py flush``, or a test database's between tests) deletes the counter's row."""
    from experiments.models import Revision

    Revision.objects.all().delete()
    before = revision.current()
    ExperimentFactory(name="after-flush")
    assert revision.current() != before
