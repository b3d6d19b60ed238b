"""poll_due: when beat's periodic poll runs, and how it rests after a slow one."""

from datetime import timedelta

import pytest
from django.utils import timezone

from clusters.models import Heartbeat
from experiments.tasks import poll_due
from tests.factories import ExperimentFactory, JobFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def intervals(settings):
    settings.SKYDECK_POLL_INTERVAL = 30.0
    settings.SKYDECK_POLL_ACTIVE_INTERVAL = 5.0


def last_poll(ended_ago, took):
    now = timezone.now()
    ended = now - timedelta(seconds=ended_ago)
    Heartbeat.objects.create(name="poll", started_at=ended - timedelta(seconds=took), finished_at=ended, duration=took)
    return now


def a_running_job():
    exp = ExperimentFactory(name="paced", desired_state="RUNNING", run_number=1)
    JobFactory(experiment=exp, attempt=1, run_number=1, status="RUNNING", sky_job_id=1, cluster_name="sd-paced")


def test_the_first_poll_is_due():
    assert poll_due()


def test_nothing_in_flight_waits_for_the_idle_interval(intervals):
    assert not poll_due(last_poll(ended_ago=10, took=1))
    Heartbeat.objects.all().delete()
    assert poll_due(last_poll(ended_ago=31, took=1))


def test_a_running_job_is_polled_at_the_active_interval(intervals):
    a_running_job()
    assert not poll_due(last_poll(ended_ago=2, took=1))
    Heartbeat.objects.all().delete()
    assert poll_due(last_poll(ended_ago=5, took=1))


def test_after_a_slow_poll_the_poller_rests_half_as_long_as_it_took(intervals):
    a_running_job()
    assert not poll_due(last_poll(ended_ago=15, took=40))
    Heartbeat.objects.all().delete()
    assert poll_due(last_poll(ended_ago=21, took=40))


def test_the_rest_never_exceeds_the_idle_interval(intervals):
    a_running_job()
    assert poll_due(last_poll(ended_ago=31, took=120))
