"""plan() as a table: (desired, observed) -> action."""

from datetime import UTC, datetime, timedelta

import pytest

from experiments.reconciler import Action, JobView, Observed, plan

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(status, attempt=1, kind="none", reason="", run=1, **kw):
    return JobView(attempt=attempt, status=status, failure_kind=kind, failure_reason=reason, run_number=run,
                   ended_at=NOW - timedelta(seconds=5), **kw)


def obs(desired, **kw):
    kw.setdefault("now", NOW)
    return Observed(desired_state=desired, **kw)


ok = job("SUCCEEDED")
user_fail = job("FAILED", kind="user", exit_code=1)
infra_fail = job("LOST", kind="infra", reason="Lost")
launching_new = job("LAUNCHING", age_seconds=1)
launching_stale = job("LAUNCHING", age_seconds=600)
running = job("RUNNING", has_job_id=True)

TABLE = [
    # desired RUNNING, nothing yet
    ("fresh, no cluster", obs("RUNNING"), Action.LAUNCH, "Launching"),
    ("fresh, cluster up", obs("RUNNING", cluster_status="UP"), Action.EXEC, "Launching"),
    ("fresh, cluster stopped", obs("RUNNING", cluster_status="STOPPED"), Action.START, "StartingCluster"),
    ("fresh, cluster init", obs("RUNNING", cluster_status="INIT"), Action.LAUNCH, "Launching"),
    ("managed ignores cluster", obs("RUNNING", cluster_status="UP", managed=True), Action.LAUNCH, "Launching"),
    # desired RUNNING, a job in flight
    ("running job", obs("RUNNING", active_job=running), Action.WAIT, "Running"),
    ("launch being submitted", obs("RUNNING", active_job=launching_new), Action.WAIT, "Launching"),
    ("launch never confirmed", obs("RUNNING", active_job=launching_stale), Action.RESUBMIT, "Resubmitting"),
    ("launch with request", obs("RUNNING", active_job=job("LAUNCHING", has_request=True, age_seconds=900)), Action.WAIT, "Launching"),
    ("restart requested", obs("RUNNING", run_number=2, active_job=running), Action.CANCEL, "Restarting"),
    # desired RUNNING, finished jobs x restart policy
    ("succeeded, never", obs("RUNNING", run_jobs=(ok,)), Action.NOTHING, "Succeeded"),
    ("succeeded, on_failure", obs("RUNNING", run_jobs=(ok,), restart_policy="on_failure", max_restarts=3), Action.NOTHING, "Succeeded"),
    ("succeeded, always", obs("RUNNING", run_jobs=(ok,), restart_policy="always", max_restarts=3), Action.LAUNCH, "Launching"),
    ("succeeded, always, budget spent", obs("RUNNING", run_jobs=(ok, ok), restart_policy="always", max_restarts=1), Action.NOTHING, "Succeeded"),
    ("failed, never", obs("RUNNING", run_jobs=(user_fail,)), Action.GIVE_UP, "Failed"),
    ("failed, on_failure", obs("RUNNING", run_jobs=(user_fail,), restart_policy="on_failure", max_restarts=2), Action.LAUNCH, "Launching"),
    ("failed twice, on_failure 2", obs("RUNNING", run_jobs=(user_fail, user_fail), restart_policy="on_failure", max_restarts=2), Action.LAUNCH, "Launching"),
    ("failed thrice, on_failure 2", obs("RUNNING", run_jobs=(user_fail,) * 3, restart_policy="on_failure", max_restarts=2), Action.GIVE_UP, "RestartLimitReached"),
    ("failed, always", obs("RUNNING", run_jobs=(user_fail,), restart_policy="always", max_restarts=1), Action.LAUNCH, "Launching"),
    ("failed, on_failure, backing off", obs("RUNNING", run_jobs=(user_fail,), restart_policy="on_failure", max_restarts=2, next_attempt_at=NOW + timedelta(seconds=30)), Action.WAIT, "BackingOff"),
    ("cancelled", obs("RUNNING", run_jobs=(job("CANCELLED"),), restart_policy="always", max_restarts=5), Action.NOTHING, "Cancelled"),
    # infrastructure failures retry whatever the policy, up to a cap
    ("infra failure, never", obs("RUNNING", run_jobs=(infra_fail,)), Action.LAUNCH, "Launching"),
    ("infra failure, cap reached", obs("RUNNING", run_jobs=(infra_fail,) * 3, max_infra_retries=2), Action.GIVE_UP, "TooManyInfraFailures"),
    ("infra failure does not spend user budget", obs("RUNNING", run_jobs=(user_fail, infra_fail), restart_policy="on_failure", max_restarts=0), Action.LAUNCH, "Launching"),
    # a bad spec never retries
    ("invalid spec", obs("RUNNING", run_jobs=(job("FAILED_LAUNCH", kind="user", reason="InvalidSpec"),), restart_policy="always", max_restarts=9), Action.GIVE_UP, "InvalidSpec"),
    ("no cloud", obs("RUNNING", run_jobs=(job("FAILED_LAUNCH", kind="infra", reason="NoCloudAccess"),)), Action.GIVE_UP, "NoCloudAccess"),
    # sweeps
    ("sweep full", obs("RUNNING", sweep_slot_free=False), Action.WAIT, "WaitingForSweepSlot"),
    ("sweep full but job running", obs("RUNNING", sweep_slot_free=False, active_job=running), Action.WAIT, "Running"),
    # cluster-level request in flight
    ("start in flight", obs("RUNNING", cluster_request_kind="start", cluster_status="STOPPED"), Action.WAIT, "ClusterBusy"),
    # desired STOPPED
    ("stopped, running job", obs("STOPPED", active_job=running, cluster_status="UP"), Action.CANCEL, "Cancelling"),
    ("stopped, launching job", obs("STOPPED", active_job=launching_new), Action.CANCEL, "Cancelling"),
    ("stopped, cluster up", obs("STOPPED", cluster_status="UP"), Action.STOP, "Stopping"),
    ("stopped, cluster up, stop unsupported", obs("STOPPED", cluster_status="UP", stop_unsupported=True), Action.NOTHING, "StopNotSupported"),
    ("stopped, cluster stopped", obs("STOPPED", cluster_status="STOPPED"), Action.NOTHING, "Stopped"),
    ("stopped, no cluster", obs("STOPPED"), Action.NOTHING, "Stopped"),
    ("stopped, stop in flight", obs("STOPPED", cluster_status="UP", cluster_request_kind="stop"), Action.WAIT, "ClusterBusy"),
    # desired TERMINATED
    ("terminated, running job", obs("TERMINATED", active_job=running, cluster_status="UP"), Action.CANCEL, "Cancelling"),
    ("terminated, cluster up", obs("TERMINATED", cluster_status="UP"), Action.DOWN, "Terminating"),
    ("terminated, cluster stopped", obs("TERMINATED", cluster_status="STOPPED"), Action.DOWN, "Terminating"),
    ("terminated, nothing left", obs("TERMINATED"), Action.NOTHING, "Terminated"),
    # an unreachable backend changes nothing
    ("unreachable, running", obs("RUNNING", backend_reachable=False, run_jobs=(user_fail,)), Action.WAIT, "BackendUnreachable"),
    ("unreachable, terminate", obs("TERMINATED", backend_reachable=False, cluster_status="UP"), Action.WAIT, "BackendUnreachable"),
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
