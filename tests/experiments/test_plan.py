"""plan() as a table: (desired, observed) -> action."""

from datetime import UTC, datetime, timedelta

import pytest

from experiments.reconciler import Action, JobView, Observed, plan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(status, attempt=1, kind="none", reason="", run=1, **kw):
    kw.setdefault("ended_at", NOW - timedelta(seconds=5))
    return JobView(attempt=attempt, status=status, failure_kind=kind, failure_reason=reason, run_number=run, **kw)


def obs(desired, **kw):
    kw.setdefault("now", NOW)
    return Observed(desired_state=desired, **kw)


ok = job("SUCCEEDED")
user_fail = job("FAILED", kind="user", exit_code=1)
infra_fail = job("LOST", kind="infra", reason="Lost")
launching_new = job("LAUNCHING", age_seconds=1)
launching_stale = job("LAUNCHING", age_seconds=600)
running = job("RUNNING", has_job_id=True)
launch_failed_twice = (
    job("FAILED_LAUNCH", attempt=1, kind="infra", reason="ClusterNotUp"),
    job("FAILED_LAUNCH", attempt=2, kind="infra", reason="LaunchFailed"),
)

TABLE = [
    # desired RUNNING, nothing yet
    ("fresh, no cluster", obs("RUNNING"), Action.LAUNCH, "Launching"),
    ("fresh, cluster up", obs("RUNNING", cluster_status="UP"), Action.EXEC, "Launching"),
    (
        "exec found the UP cluster not set up",
        obs("RUNNING", cluster_status="UP", run_jobs=(job("FAILED_LAUNCH", kind="infra", reason="ClusterNotUp"),)),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "two launches onto the cluster failed: tear it down first",
        obs(
            "RUNNING",
            cluster_status="INIT",
            run_jobs=launch_failed_twice,
        ),
        Action.DOWN,
        "Recreating",
    ),
    (
        "two launches failed and the cluster is gone: launch on a new one",
        obs(
            "RUNNING",
            run_jobs=launch_failed_twice,
        ),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "after an infra failure of another kind, exec again",
        obs("RUNNING", cluster_status="UP", run_jobs=(infra_fail,)),
        Action.EXEC,
        "Launching",
    ),
    ("fresh, cluster stopped", obs("RUNNING", cluster_status="STOPPED"), Action.START, "StartingCluster"),
    ("fresh, cluster init", obs("RUNNING", cluster_status="INIT"), Action.LAUNCH, "Launching"),
    ("managed ignores cluster", obs("RUNNING", cluster_status="UP", managed=True), Action.LAUNCH, "Launching"),
    # desired RUNNING, a job in flight
    ("running job", obs("RUNNING", active_job=running), Action.WAIT, "Running"),
    ("launch being submitted", obs("RUNNING", active_job=launching_new), Action.WAIT, "Launching"),
    ("launch never confirmed", obs("RUNNING", active_job=launching_stale), Action.RESUBMIT, "Resubmitting"),
    (
        "launch with request",
        obs("RUNNING", active_job=job("LAUNCHING", has_request=True, age_seconds=900)),
        Action.WAIT,
        "Launching",
    ),
    ("restart requested", obs("RUNNING", run_number=2, active_job=running), Action.CANCEL, "Restarting"),
    # desired RUNNING, finished jobs x restart policy
    ("succeeded, never", obs("RUNNING", run_jobs=(ok,)), Action.NOTHING, "Succeeded"),
    (
        "succeeded, on_failure",
        obs("RUNNING", run_jobs=(ok,), restart_policy="on_failure", max_restarts=3),
        Action.NOTHING,
        "Succeeded",
    ),
    (
        "succeeded, always",
        obs("RUNNING", run_jobs=(ok,), restart_policy="always", max_restarts=3),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "succeeded, always, budget spent",
        obs("RUNNING", run_jobs=(ok, ok), restart_policy="always", max_restarts=1),
        Action.NOTHING,
        "Succeeded",
    ),
    ("failed, never", obs("RUNNING", run_jobs=(user_fail,)), Action.GIVE_UP, "Failed"),
    (
        "failed, on_failure",
        obs("RUNNING", run_jobs=(user_fail,), restart_policy="on_failure", max_restarts=2),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "failed twice, on_failure 2",
        obs("RUNNING", run_jobs=(user_fail, user_fail), restart_policy="on_failure", max_restarts=2),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "failed thrice, on_failure 2",
        obs("RUNNING", run_jobs=(user_fail,) * 3, restart_policy="on_failure", max_restarts=2),
        Action.GIVE_UP,
        "RestartLimitReached",
    ),
    (
        "failed, always",
        obs("RUNNING", run_jobs=(user_fail,), restart_policy="always", max_restarts=1),
        Action.LAUNCH,
        "Launching",
    ),
    (
        "failed, on_failure, backing off",
        obs(
            "RUNNING",
            run_jobs=(user_fail,),
            restart_policy="on_failure",
            max_restarts=2,
            next_attempt_at=NOW + timedelta(seconds=30),
        ),
        Action.WAIT,
        "BackingOff",
    ),
    (
        "cancelled",
        obs("RUNNING", run_jobs=(job("CANCELLED"),), restart_policy="always", max_restarts=5),
        Action.NOTHING,
        "Cancelled",
    ),
    # infrastructure failures retry whatever the policy, up to a cap
    ("infra failure, never", obs("RUNNING", run_jobs=(infra_fail,)), Action.LAUNCH, "Launching"),
    (
        "infra failure, cap reached",
        obs("RUNNING", run_jobs=(infra_fail,) * 3, max_infra_retries=2),
        Action.GIVE_UP,
        "TooManyInfraFailures",
    ),
    (
        "infra failure does not spend user budget",
        obs("RUNNING", run_jobs=(user_fail, infra_fail), restart_policy="on_failure", max_restarts=0),
        Action.LAUNCH,
        "Launching",
    ),
    # a bad spec never retries
    (
        "invalid spec",
        obs(
            "RUNNING",
            run_jobs=(job("FAILED_LAUNCH", kind="user", reason="InvalidSpec"),),
            restart_policy="always",
            max_restarts=9,
        ),
        Action.GIVE_UP,
        "InvalidSpec",
    ),
    (
        "no cloud",
        obs("RUNNING", run_jobs=(job("FAILED_LAUNCH", kind="infra", reason="NoCloudAccess"),)),
        Action.GIVE_UP,
        "NoCloudAccess",
    ),
    # sweeps
    ("sweep full", obs("RUNNING", sweep_slot_free=False), Action.WAIT, "WaitingForSweepSlot"),
    ("sweep full but job running", obs("RUNNING", sweep_slot_free=False, active_job=running), Action.WAIT, "Running"),
    # cluster-level request in flight
    (
        "start in flight",
        obs("RUNNING", cluster_request_kind="start", cluster_status="STOPPED"),
        Action.WAIT,
        "ClusterBusy",
    ),
    # desired STOPPED
    ("stopped, running job", obs("STOPPED", active_job=running, cluster_status="UP"), Action.CANCEL, "Cancelling"),
    ("stopped, launching job", obs("STOPPED", active_job=launching_new), Action.CANCEL, "Cancelling"),
    ("stopped, cluster up", obs("STOPPED", cluster_status="UP"), Action.STOP, "Stopping"),
    (
        "stopped, cluster up, stop unsupported",
        obs("STOPPED", cluster_status="UP", stop_unsupported=True),
        Action.NOTHING,
        "StopNotSupported",
    ),
    ("stopped, cluster stopped", obs("STOPPED", cluster_status="STOPPED"), Action.NOTHING, "Stopped"),
    ("stopped, no cluster", obs("STOPPED"), Action.NOTHING, "Stopped"),
    (
        "stopped, stop in flight",
        obs("STOPPED", cluster_status="UP", cluster_request_kind="stop"),
        Action.WAIT,
        "ClusterBusy",
    ),
    # desired TERMINATED
    (
        "terminated, running job",
        obs("TERMINATED", active_job=running, cluster_status="UP"),
        Action.CANCEL,
        "Cancelling",
    ),
    ("terminated, cluster up", obs("TERMINATED", cluster_status="UP"), Action.DOWN, "Terminating"),
    ("terminated, cluster stopped", obs("TERMINATED", cluster_status="STOPPED"), Action.DOWN, "Terminating"),
    ("terminated, nothing left", obs("TERMINATED"), Action.NOTHING, "Terminated"),
    # a user's cancel of one job
    (
        "cancel requested",
        obs("RUNNING", active_job=job("RUNNING", has_job_id=True, cancel_requested=True)),
        Action.CANCEL,
        "CancelRequested",
    ),
    # a finished run's cluster: kept up for a restart, then stopped (or torn down where it cannot stop)
    (
        "finished, idle policy not due",
        obs("RUNNING", run_jobs=(ok,), cluster_status="UP", idle_minutes=10),
        Action.NOTHING,
        "Succeeded",
    ),
    (
        "finished, idle policy due",
        obs(
            "RUNNING",
            run_jobs=(job("SUCCEEDED", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
        ),
        Action.STOP,
        "IdleStop",
    ),
    (
        "finished, idle, cannot stop",
        obs(
            "RUNNING",
            run_jobs=(job("SUCCEEDED", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
            can_stop=False,
        ),
        Action.DOWN,
        "IdleTeardown",
    ),
    (
        "finished, idle, keep up",
        obs(
            "RUNNING",
            run_jobs=(job("SUCCEEDED", ended_at=NOW - timedelta(days=3)),),
            cluster_status="UP",
            idle_minutes=None,
        ),
        Action.NOTHING,
        "Succeeded",
    ),
    (
        "finished, idle, grace for autostop",
        obs(
            "RUNNING",
            run_jobs=(job("SUCCEEDED", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
            idle_grace=120,
        ),
        Action.NOTHING,
        "Succeeded",
    ),
    (
        "finished, cluster already stopped",
        obs(
            "RUNNING",
            run_jobs=(job("SUCCEEDED", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="STOPPED",
            idle_minutes=10,
        ),
        Action.NOTHING,
        "Succeeded",
    ),
    (
        "gave up, idle due: give up first",
        obs(
            "RUNNING",
            run_jobs=(job("FAILED", kind="user", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
        ),
        Action.GIVE_UP,
        "Failed",
    ),
    (
        "gave up already, idle due: the cluster goes",
        obs(
            "RUNNING",
            run_jobs=(job("FAILED", kind="user", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
            given_up=True,
        ),
        Action.STOP,
        "IdleStop",
    ),
    (
        "stopped on Slurm, idle due",
        obs(
            "STOPPED",
            run_jobs=(job("CANCELLED", ended_at=NOW - timedelta(minutes=11)),),
            cluster_status="UP",
            idle_minutes=10,
            can_stop=False,
        ),
        Action.DOWN,
        "IdleTeardown",
    ),
    (
        "stopped on Slurm, not due",
        obs("STOPPED", run_jobs=(ok,), cluster_status="UP", idle_minutes=10, can_stop=False),
        Action.NOTHING,
        "StopNotSupported",
    ),
    # an unreachable backend changes nothing
    (
        "unreachable, running",
        obs("RUNNING", backend_reachable=False, run_jobs=(user_fail,)),
        Action.WAIT,
        "BackendUnreachable",
    ),
    (
        "unreachable, terminate",
        obs("TERMINATED", backend_reachable=False, cluster_status="UP"),
        Action.WAIT,
        "BackendUnreachable",
    ),
]


@pytest.mark.parametrize(("label", "observed", "action", "reason"), TABLE, ids=[row[0] for row in TABLE])
def test_plan(label, observed, action, reason):
    decision = plan(observed)
    assert (decision.action, decision.reason) == (action, reason)


def test_give_up_message_names_the_limit_and_exit_code():
    decision = plan(obs("RUNNING", run_jobs=(user_fail,) * 3, restart_policy="on_failure", max_restarts=2))
    assert "max_restarts=2" in decision.message
    assert "exit code 1" in decision.message


def test_unreachable_backend_leaves_phase_alone():
    assert plan(obs("RUNNING", backend_reachable=False)).phase is None


def test_plan_is_pure():
    observed = obs("RUNNING", run_jobs=(user_fail,), restart_policy="on_failure", max_restarts=1)
    assert plan(observed) == plan(observed)


def test_the_idle_policy_says_when_the_cluster_goes():
    decision = plan(obs("RUNNING", run_jobs=(ok,), cluster_status="UP", idle_minutes=10))
    assert decision.idle_until == ok.ended_at + timedelta(minutes=10)
    assert decision.message == "Attempt 1 succeeded."  # the pages say when, from idle_until
    torn = plan(obs("RUNNING", run_jobs=(ok,), cluster_status="UP", idle_minutes=10, can_stop=False))
    assert torn.idle_until == decision.idle_until
    assert plan(obs("RUNNING", run_jobs=(ok,), cluster_status="UP", idle_minutes=None)).idle_until is None
