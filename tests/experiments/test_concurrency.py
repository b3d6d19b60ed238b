"""Concurrent reconcilers on PostgreSQL never launch twice."""

import subprocess
import sys
import threading

import pytest
from django.db import IntegrityError, close_old_connections, connection, transaction

from experiments.models import Job
from tests.factories import ExperimentFactory
from tests.support import ROOT, subprocess_env

pytestmark = pytest.mark.postgres

N_EXPERIMENTS = 25
N_RECONCILERS = 4


def test_concurrent_reconcile_processes_create_one_job_per_experiment(postgres_db, transactional_db, local_root):
    experiments = [
        ExperimentFactory(name=f"race-{i}", command="sleep 60", desired_state="RUNNING", run_number=1)
        for i in range(N_EXPERIMENTS)
    ]
    env = subprocess_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "reconcile"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(N_RECONCILERS)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    for exp in experiments:
        assert exp.jobs.count() == 1, exp.name
    # Every experiment was launched by exactly one of the reconcilers.
    launches = sum(out.count(": launch") for out in outputs)
    assert launches == N_EXPERIMENTS, outputs
    assert len(list(local_root.glob("*/jobs/*/meta.json"))) == N_EXPERIMENTS


def test_the_database_forbids_a_second_active_job(postgres_db, transactional_db):
    """Even if two writers get past the claim, the partial unique index stops the second."""
    exp = ExperimentFactory(name="double")
    barrier = threading.Barrier(2)
    results = []

    def insert(attempt):
        close_old_connections()
        try:
            barrier.wait()
            with transaction.atomic():
                Job.objects.create(
                    experiment=exp,
                    attempt=attempt,
                    generation=1,
                    backend="local",
                    name=f"sd-double-{attempt}",
                    command="true",
                    status="LAUNCHING",
                )
            results.append("ok")
        except IntegrityError:
            results.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=insert, args=(a,)) for a in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok", "refused"]
    assert exp.jobs.count() == 1


@pytest.mark.django_db
def test_finished_jobs_do_not_count_as_active():
    exp = ExperimentFactory(name="history")
    for attempt, status in enumerate(["FAILED", "SUCCEEDED", "CANCELLED", "LOST"], start=1):
        Job.objects.create(
            experiment=exp,
            attempt=attempt,
            generation=1,
            backend="local",
            name=f"j{attempt}",
            command="true",
            status=status,
        )
    Job.objects.create(
        experiment=exp, attempt=5, generation=1, backend="local", name="j5", command="true", status="RUNNING"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(
            experiment=exp, attempt=6, generation=1, backend="local", name="j6", command="true", status="PENDING"
        )


@pytest.mark.django_db
def test_claim_is_exclusive():
    from experiments.reconciler import claim, release

    exp = ExperimentFactory(name="claimed")
    assert claim(exp.pk, "a")
    assert not claim(exp.pk, "b")
    release(exp.pk, "b")  # not the holder: no effect
    assert not claim(exp.pk, "b")
    release(exp.pk, "a")
    assert claim(exp.pk, "b")
