"""Guardrails: budgets, the runtime limit, the stall watchdog, failure classes, W&B run identity.

plan() is checked as a table; then each guardrail on real local jobs through the real
control loop (poll and reconcile passes in process, as beat runs them). Where a test
needs time to pass (a run two hours old, a job silent for twenty minutes), it moves the
job's start or its log file's modification time back instead of waiting.
"""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from experiments import intent
from experiments.launch import launch_spec
from experiments.models import Event, Experiment, FailureRule, Job
from experiments.reconciler import Action, JobView, Observed, plan
from experiments.tasks import run_poll, run_reconcile_all
from tests.factories import ExperimentFactory, JobFactory, SweepFactory
from tests.support import restart, set_state, wait_for

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUNNING = JobView(attempt=1, status="RUNNING", has_job_id=True, run_number=1)


def obs(**kw):
    kw.setdefault("now", NOW)
    kw.setdefault("desired_state", "RUNNING")
    return Observed(**kw)


# --- plan() ------------------------------------------------------------------------------


def test_a_budget_reached_stops_a_running_job_with_the_figures():
    decision = plan(obs(active_job=RUNNING, spent=50.25, max_cost=50.0))
    assert (decision.action, decision.reason, decision.halt_to) == (Action.HALT, "BudgetExceeded", "STOPPED")
    assert "$50.00" in decision.message and "$50.25" in decision.message


def test_a_budget_not_reached_changes_nothing():
    assert plan(obs(active_job=RUNNING, spent=49.0, max_cost=50.0)).action == Action.WAIT


def test_a_budget_reached_keeps_a_restart_from_launching_and_may_terminate():
    failed = JobView(attempt=1, status="FAILED", failure_kind="user", ended_at=NOW)
    decision = plan(
        obs(
            run_jobs=(failed,),
            restart_policy="on_failure",
            max_restarts=3,
            spent=9,
            max_cost=5,
            limit_action="TERMINATED",
        )
    )
    assert (decision.action, decision.halt_to) == (Action.HALT, "TERMINATED")


def test_a_finished_run_is_not_stopped_by_its_budget():
    done = JobView(attempt=1, status="SUCCEEDED", ended_at=NOW)
    assert plan(obs(run_jobs=(done,), spent=99, max_cost=5)).action == Action.NOTHING


def test_a_sweeps_budget_counts_for_each_of_its_experiments():
    decision = plan(obs(sweep_name="lr", sweep_spent=120.0, sweep_max_cost=100.0, sweep_limit_action="TERMINATED"))
    assert (decision.action, decision.reason, decision.halt_to) == (Action.HALT, "BudgetExceeded", "TERMINATED")
    assert "Sweep lr" in decision.message and "$100.00" in decision.message and "$120.00" in decision.message
    waiting = plan(obs(sweep_slot_free=False, sweep_name="lr", sweep_spent=120.0, sweep_max_cost=100.0))
    assert waiting.action == Action.HALT


def test_the_runtime_limit_counts_the_whole_run():
    started = NOW - timedelta(hours=2, minutes=1)
    decision = plan(obs(active_job=RUNNING, run_started_at=started, max_runtime_minutes=120))
    assert (decision.action, decision.reason) == (Action.HALT, "RuntimeLimitReached")
    assert "2 h 00 min" in decision.message and "2 h 01 min" in decision.message
    young = plan(obs(active_job=RUNNING, run_started_at=NOW - timedelta(minutes=30), max_runtime_minutes=120))
    assert young.action == Action.WAIT


def test_the_watchdog_restarts_or_flags_a_silent_job():
    silent = {"output_at": NOW - timedelta(minutes=16), "output_checked_at": NOW, "stall_minutes": 15}
    decision = plan(obs(active_job=RUNNING, **silent))
    assert (decision.action, decision.reason) == (Action.RESTART_STALLED, "Stalled")
    assert "No output since 11:44 UTC (watchdog: 15 min)" in decision.message
    flagged = plan(obs(active_job=RUNNING, stall_action="flag", **silent))
    assert (flagged.action, flagged.reason, flagged.phase) == (Action.WAIT, "Stalled", "RUNNING")


def test_the_watchdog_does_not_act_on_what_it_cannot_know():
    # A copy never refreshed proves no silence; nor does silence shorter than the threshold; nor an off watchdog.
    assert plan(obs(active_job=RUNNING, stall_minutes=15, output_at=NOW - timedelta(hours=1))).action == Action.WAIT
    quiet = {"output_at": NOW - timedelta(minutes=10), "output_checked_at": NOW}
    assert plan(obs(active_job=RUNNING, stall_minutes=15, **quiet)).action == Action.WAIT
    assert plan(obs(active_job=RUNNING, stall_minutes=None, **quiet)).action == Action.WAIT


def test_a_stopped_experiment_shows_which_guardrail_stopped_it():
    decision = plan(obs(desired_state="STOPPED", halt_reason="BudgetExceeded", halt_message="Budget $5.00 reached."))
    assert (decision.action, decision.reason, decision.message) == (
        Action.NOTHING,
        "BudgetExceeded",
        "Budget $5.00 reached.",
    )


# --- the control loop, with real local jobs ---------------------------------------------------

pytestmark = pytest.mark.django_db


def drive_until(predicate, timeout=30, message="state"):
    def step():
        run_poll()
        run_reconcile_all()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.2, message=message)


def fresh(exp):
    return Experiment.objects.get(pk=exp.pk)


def running_job(exp):
    return drive_until(lambda: exp.jobs.filter(status="RUNNING").first(), message="a running job")


def started_ago(job, local_root, minutes):
    """The job started ``minutes`` ago, as far as its backend says (its own record of the start, moved back)."""
    then = timezone.now() - timedelta(minutes=minutes)
    record = local_root / job.cluster_name / "jobs" / str(job.sky_job_id) / "started_at"
    assert record.exists()
    record.write_text(then.strftime("%Y-%m-%dT%H:%M:%SZ\n"))
    Job.objects.filter(pk=job.pk).update(started_at=then)


def test_the_runtime_limit_stops_a_long_job(local_root, owner):
    exp = ExperimentFactory(name="long-run", command="echo started; sleep 300", max_runtime_minutes=120, owner=owner)
    set_state(exp, "RUNNING", owner)
    job = running_job(exp)
    # Two hours and a minute later (the job's start moved back rather than waited for).
    started_ago(job, local_root, 121)
    drive_until(lambda: fresh(exp).phase == "STOPPED", message="STOPPED by the runtime limit")
    exp = fresh(exp)
    assert (exp.desired_state, exp.status_reason) == ("STOPPED", "RuntimeLimitReached")
    assert "Runtime limit 2 h 00 min reached" in exp.status_message
    assert Job.objects.get(pk=job.pk).status == "CANCELLED"
    event = exp.events.get(kind=Event.Kind.GUARDRAIL)
    assert "Desired state RUNNING → STOPPED" in event.message and event.data["notify"] == "guardrail"
    assert event.actor == "reconciler"
    # The user's next change of desired state is theirs: the guardrail's reason goes.
    set_state(exp, "RUNNING", owner)
    assert fresh(exp).halt_reason == ""
    set_state(fresh(exp), "STOPPED", owner)


def test_a_budget_stops_the_next_attempt_from_recorded_costs(local_root, owner):
    exp = ExperimentFactory(
        name="costly",
        command="exit 3",
        restart_policy="on_failure",
        max_restarts=5,
        max_cost=5.0,
        limit_action="TERMINATED",
        owner=owner,
    )
    set_state(exp, "RUNNING", owner)
    drive_until(lambda: exp.jobs.filter(status="FAILED").exists(), message="a failed attempt")
    # What SkyPilot would have recorded for a cloud attempt (the local backend costs nothing).
    exp.jobs.filter(status="FAILED").update(cost=6.5)
    drive_until(lambda: fresh(exp).phase == "TERMINATED", message="TERMINATED by the budget")
    exp = fresh(exp)
    assert (exp.desired_state, exp.status_reason) == ("TERMINATED", "BudgetExceeded")
    assert exp.status_message == "Budget $5.00 reached: its jobs have cost $6.50."
    attempts = exp.jobs.count()
    run_poll()
    run_reconcile_all()
    assert exp.jobs.count() == attempts  # nothing more launched
    with pytest.raises(ValidationError, match=r"over its budget: \$6.50 spent of \$5.00"):
        intent.set_desired_state(intent.Actor(owner), exp, "RUNNING")
    assert fresh(exp).desired_state == "TERMINATED"
    # Raising the budget lets it run again.
    intent.edit(intent.Actor(owner), exp, {"max_cost": 100.0})
    set_state(fresh(exp), "RUNNING", owner)
    assert fresh(exp).desired_state == "RUNNING"
    set_state(fresh(exp), "TERMINATED", owner)


def test_a_sweeps_budget_counts_all_its_experiments_and_stops_the_running_ones(local_root, owner):
    sweep = SweepFactory(name="lr-sweep", max_cost=10.0, owner=owner)
    running = ExperimentFactory(name="lr-0", command="echo go; sleep 300", sweep=sweep, owner=owner)
    finished = ExperimentFactory(name="lr-1", sweep=sweep, owner=owner)
    earlier = JobFactory(experiment=finished, attempt=1, status="SUCCEEDED", cost=4.0)
    set_state(running, "RUNNING", owner)
    job = running_job(running)
    run_reconcile_all()
    assert fresh(running).desired_state == "RUNNING"  # $4 of $10 so far
    # The sibling's cloud attempt turns out to have cost more (as the poller records it).
    Job.objects.filter(pk=earlier.pk).update(cost=11.0)
    drive_until(lambda: fresh(running).phase == "STOPPED", message="STOPPED by the sweep's budget")
    running = fresh(running)
    assert (running.status_reason, Job.objects.get(pk=job.pk).status) == ("BudgetExceeded", "CANCELLED")
    assert "Sweep lr-sweep's budget $10.00 reached" in running.status_message and "$11.00" in running.status_message
    # Its siblings cannot start either.
    with pytest.raises(ValidationError, match="Sweep lr-sweep is over its budget"):
        intent.set_desired_state(intent.Actor(owner), finished, "RUNNING")


def silence(job, local_root, minutes):
    """The job's output last grew ``minutes`` ago (and it started before that)."""
    then = time.time() - minutes * 60
    os.utime(job.log_path, (then, then))
    started_ago(job, local_root, minutes + 1)


def test_the_watchdog_restarts_a_silent_job_without_using_the_restart_budget(local_root, owner):
    exp = ExperimentFactory(name="silent", command="echo started; sleep 300", stall_minutes=15, owner=owner)
    assert exp.restart_policy == "never"
    set_state(exp, "RUNNING", owner)
    first = running_job(exp)
    silence(first, local_root, 16)
    second = drive_until(lambda: exp.jobs.filter(attempt=2, status="RUNNING").first(), message="attempt 2 running")
    first = Job.objects.get(pk=first.pk)
    assert (first.status, first.failure_kind, first.failure_reason) == ("FAILED", "infra", "Stalled")
    assert "No output since" in first.error_message
    event = exp.events.get(kind=Event.Kind.GUARDRAIL)
    assert "Attempt 1 stalled" in event.message and "does not count against max_restarts" in event.message
    assert second.run_number == first.run_number  # the same run: a retry, not a new run
    set_state(fresh(exp), "STOPPED", owner)
    drive_until(lambda: fresh(exp).phase == "STOPPED", message="STOPPED")


def test_the_watchdog_only_flags_when_told_to_and_says_so_once(local_root, owner):
    exp = ExperimentFactory(
        name="flagged", command="echo started; sleep 300", stall_minutes=15, stall_action="flag", owner=owner
    )
    set_state(exp, "RUNNING", owner)
    job = running_job(exp)
    silence(job, local_root, 20)
    drive_until(lambda: fresh(exp).status_reason == "Stalled", message="flagged Stalled")
    for _ in range(3):
        run_poll()
        run_reconcile_all()
    assert Job.objects.get(pk=job.pk).status == "RUNNING" and exp.jobs.count() == 1
    assert exp.events.filter(kind=Event.Kind.GUARDRAIL).count() == 1
    assert "flagged only" in fresh(exp).status_message
    # New output clears the flag.
    os.utime(job.log_path, None)
    drive_until(lambda: fresh(exp).status_reason == "Running", message="Running again")
    set_state(fresh(exp), "STOPPED", owner)
    drive_until(lambda: fresh(exp).phase == "STOPPED", message="STOPPED")


def test_the_global_default_turns_the_watchdog_on_and_zero_turns_it_off(settings):
    settings.SKYDECK_STALL_MINUTES = 30
    assert ExperimentFactory.build(stall_minutes=None).stall_threshold == 30
    assert ExperimentFactory.build(stall_minutes=0).stall_threshold is None
    assert ExperimentFactory.build(stall_minutes=5).stall_threshold == 5
    settings.SKYDECK_STALL_MINUTES = 0
    assert ExperimentFactory.build(stall_minutes=None).stall_threshold is None


# --- failure classes ------------------------------------------------------------------------------

FAILURES = [
    ("OutOfMemory", "user", "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20 GiB' >&2; exit 1"),
    ("OutOfMemory", "user", "echo loading; kill -9 $$"),
    ("Preempted", "infra", "echo 'Spot instance interruption notice: the instance will be reclaimed'; exit 143"),
    ("NetworkError", "infra", "echo 'RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1191' >&2; exit 1"),
    ("NetworkError", "infra", "echo 'ConnectionResetError: [Errno 104] Connection reset by peer' >&2; exit 1"),
    ("GPUError", "infra", "echo 'RuntimeError: CUDA error: uncorrectable ECC error encountered' >&2; exit 1"),
    ("DiskFull", "user", "echo 'OSError: [Errno 28] No space left on device' >&2; exit 1"),
    ("MissingModule", "user", "python3 -c 'import skydeck_no_such_module'"),
    ("CommandNotFound", "user", "skydeck-no-such-command --help"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "kind", "command"), FAILURES, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(FAILURES)]
)
def test_each_default_rule_classifies_a_real_failure(local_root, owner, reason, kind, command):
    assert FailureRule.objects.filter(reason=reason, enabled=True).exists()  # shipped by the migration
    exp = ExperimentFactory(name=f"fails-{reason.lower()}", command=command, owner=owner)
    set_state(exp, "RUNNING", owner)
    job = drive_until(
        lambda: exp.jobs.filter(attempt=1).exclude(status__in=["LAUNCHING", "PENDING", "RUNNING"]).first(),
        message="attempt 1 ended",
    )
    assert (job.status, job.failure_kind, job.failure_reason) == ("FAILED", kind, reason), job.error_message
    assert job.error_message.startswith(f"{reason}: ")
    failure = exp.events.get(kind=Event.Kind.FAILURE, job=job)
    assert reason in failure.message and failure.data["notify"] == "job_failed"
    if kind == "infra":  # retried whatever the restart policy (never, here)
        drive_until(lambda: exp.jobs.filter(attempt=2).exists(), message="a retry")
    else:
        drive_until(lambda: fresh(exp).phase == "FAILED", message="FAILED")
        assert fresh(exp).status_reason == "Failed" and exp.jobs.count() == 1
    set_state(fresh(exp), "TERMINATED", owner)
    drive_until(lambda: fresh(exp).phase == "TERMINATED", message="TERMINATED")


def test_an_unclassified_failure_stays_the_users_and_rules_are_edited_in_the_admin(local_root, owner):
    exp = ExperimentFactory(name="plain-fail", command="echo 'ValueError: bad lr' >&2; exit 2", owner=owner)
    set_state(exp, "RUNNING", owner)
    job = drive_until(lambda: exp.jobs.filter(status="FAILED").first(), message="FAILED")
    assert (job.failure_kind, job.failure_reason, job.exit_code) == ("user", "Failed", 2)
    # A rule of one's own (what the admin saves) classifies the next one; the first matching rule wins.
    FailureRule.objects.create(position=1, reason="BadHyperparameter", kind="user", pattern=r"ValueError: bad lr")
    restart(fresh(exp), owner)
    second = drive_until(lambda: exp.jobs.filter(attempt=2, status="FAILED").first(), message="attempt 2 FAILED")
    assert second.failure_reason == "BadHyperparameter"


def test_a_rule_must_match_something_and_be_a_valid_pattern():
    with pytest.raises(ValidationError) as caught:
        FailureRule(reason="Nothing", kind="user").full_clean()
    assert "pattern" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        FailureRule(reason="Broken", kind="user", pattern="(unclosed").full_clean()
    assert "Not a regular expression" in caught.value.message_dict["pattern"][0]
    with pytest.raises(ValidationError) as caught:
        FailureRule(reason="not camel", kind="user", exit_codes=["x"]).full_clean()
    assert {"reason", "exit_codes"} <= set(caught.value.message_dict)


# --- W&B run identity ---------------------------------------------------------------------------------


def test_a_wandb_run_survives_restarts_within_a_run(local_root, owner, settings):
    settings.SKYDECK_WANDB_URL_TEMPLATE = "https://wandb.ai/team/{project}/runs/{name}"
    exp = ExperimentFactory(
        name="tracked",
        command='echo "run=$WANDB_RUN_ID resume=$WANDB_RESUME"; exit 1',
        restart_policy="on_failure",
        max_restarts=1,
        owner=owner,
    )
    set_state(exp, "RUNNING", owner)
    drive_until(lambda: fresh(exp).phase == "FAILED", message="both attempts FAILED")
    first, second = exp.jobs.order_by("attempt")
    printed = {Path(j.log_path).read_text().strip() for j in (first, second)}
    assert printed == {f"run=tracked-{exp.pk}-run1 resume=allow"}  # the same W&B run for both attempts
    restart(fresh(exp), owner)
    spec = launch_spec(fresh(exp), 3)
    assert spec.envs["WANDB_RUN_ID"] == f"tracked-{exp.pk}-run2"  # a new run, a new W&B run
    set_state(fresh(exp), "STOPPED", owner)


def test_no_wandb_link_no_wandb_variables_and_the_users_own_win(settings):
    settings.SKYDECK_WANDB_URL_TEMPLATE = ""
    plain = ExperimentFactory.build(name="plain", flags={"lr": 0.1})
    assert "WANDB_RUN_ID" not in launch_spec(plain, 1).envs
    linked = ExperimentFactory.build(
        name="linked", flags={"wandb": "https://wandb.ai/team/proj/runs/abc"}, envs={"WANDB_RUN_ID": "mine"}
    )
    envs = launch_spec(linked, 1).envs
    assert (envs["WANDB_RUN_ID"], envs["WANDB_RESUME"]) == ("mine", "allow")
