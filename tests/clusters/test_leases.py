"""Leases and claims: one holder at a time, renewed while it works, replaced at once when its process is gone."""

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from clusters.leases import holder_gone, holder_token
from clusters.models import Heartbeat
from experiments import reconciler
from tests.factories import ExperimentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def dead_holder():
    """The token of a process of this host that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = holder_token().split(":")[0]
    return f"{host}:{int(proc.stdout)}:deadbeef"


def test_a_holder_on_this_host_is_known_gone_only_when_its_process_is(dead_holder):
    assert holder_gone(dead_holder)
    assert not holder_gone(holder_token())  # this process
    assert not holder_gone("another-host:1:abc")  # cannot tell: wait for the lease to run out


def test_one_holder_at_a_time_and_only_the_holder_renews_or_releases():
    assert Heartbeat.try_lease("poll", 15, "here:1:a")
    assert not Heartbeat.try_lease("poll", 15, "there:2:b")
    assert not Heartbeat.renew("poll", 15, "there:2:b")
    assert Heartbeat.renew("poll", 15, "here:1:a")
    Heartbeat.release("poll", "there:2:b")
    assert not Heartbeat.try_lease("poll", 15, "there:2:b")
    Heartbeat.release("poll", "here:1:a")
    assert Heartbeat.try_lease("poll", 15, "there:2:b")


def test_an_expired_lease_is_taken_and_a_dead_holders_at_once(dead_holder):
    Heartbeat.objects.create(name="poll", lease_until=timezone.now() - timedelta(seconds=1), lease_holder="x:1:a")
    assert Heartbeat.try_lease("poll", 15, "y:2:b")
    Heartbeat.objects.filter(name="poll").update(
        lease_until=timezone.now() + timedelta(minutes=5), lease_holder=dead_holder
    )
    assert Heartbeat.try_lease("poll", 15, "y:2:b")


def test_a_claim_held_by_a_dead_process_is_taken_at_once(dead_holder):
    exp = ExperimentFactory(claimed_by=dead_holder, claim_expires_at=timezone.now() + timedelta(minutes=5))
    assert reconciler.claim(exp.pk, "me:1:x")
    exp.refresh_from_db()
    assert exp.claimed_by == "me:1:x"
    # A live holder's claim is respected until it runs out.
    assert not reconciler.claim(exp.pk, "other:1:y")
    reconciler.release(exp.pk, "other:1:y")
    assert not reconciler.claim(exp.pk, "other:1:y")


def test_a_cluster_row_written_between_the_polls_read_and_write_is_updated_not_inserted_twice():
    """The poller read the table; a reconciler then recorded the cluster it launched; the poll goes on."""
    from clusters.backends.base import ClusterInfo
    from clusters.models import Cluster
    from clusters.poller import write_clusters

    now = timezone.now()
    snapshot = {c.name: c for c in Cluster.objects.filter(backend="local")}  # empty: what the poll saw
    Cluster.objects.create(backend="local", name="sd-race", status="INIT")  # the reconciler, meanwhile
    write_clusters("local", {"sd-race": ClusterInfo(name="sd-race", status="UP")}, now, existing=snapshot)
    assert list(Cluster.objects.values_list("name", "status")) == [("sd-race", "UP")]


def test_a_quiet_poll_writes_no_cluster_row(django_assert_num_queries):
    from clusters.backends.base import ClusterInfo
    from clusters.models import Cluster
    from clusters.poller import write_clusters

    now = timezone.now()
    info = ClusterInfo(name="sd-quiet", status="UP", resources="local process", infra="local", hourly_cost=0.0)
    write_clusters("local", {"sd-quiet": info}, now)
    Cluster.objects.filter(name="sd-quiet").update(launched_at=now)
    with django_assert_num_queries(1):  # the read; nothing changed, so nothing is written
        write_clusters("local", {"sd-quiet": info}, now + timedelta(seconds=5))
