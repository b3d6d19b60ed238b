"""Metrics from a job's output: the line formats, incremental reading, storage once, downsampling, the pass.

The end-to-end tests run real local jobs through the real control loop (poll and
reconcile in process, as beat would) with the worker's metrics pass beside them.
"""

import shlex
import sys
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from clusters.models import Heartbeat
from experiments import metrics
from experiments.metric_models import MetricCursor, MetricPattern, MetricPoint, MetricSeries
from experiments.metric_tasks import PassInProgress, run_parse_metrics
from experiments.models import Event, Experiment
from experiments.tasks import run_poll, run_reconcile_all
from tests.factories import ExperimentFactory, JobFactory, UserFactory
from tests.support import ROOT, actor, restart, set_state, wait_for

pytestmark = pytest.mark.django_db

TRAIN = f"{sys.executable} {ROOT / 'examples' / 'train.py'}"


def parse(line, pattern=None):
    reading = metrics.LineParser(pattern).parse(line)
    return None if reading is None else (reading.step, reading.values)


# --- the line formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('SKYDECK {"step": 100, "loss": 0.42}', (100, {"loss": 0.42})),
        ('SKYDECK {"loss": 1, "acc": 0.5}', (None, {"loss": 1.0, "acc": 0.5})),
        ('SKYDECK {"_step": 7, "train": {"loss": 0.3, "tokens": 12}}', (7, {"train/loss": 0.3, "train/tokens": 12.0})),
        ('2026-01-01 INFO SKYDECK {"step": 2, "loss": 0.2}', (2, {"loss": 0.2})),
        ('SKYDECK {"step": 3, "loss": 0.1, "note": "x", "ok": true, "acc": NaN}', (3, {"loss": 0.1})),
        ("SKYDECK step=5 loss=.5 lr=1e-3", (5, {"loss": 0.5, "lr": 0.001})),
        ("step=100 loss=0.42 lr=3e-4", (100, {"loss": 0.42, "lr": 0.0003})),
        ("step=4, loss=0.5 | acc=0.9; grad_norm=-1.5", (4, {"loss": 0.5, "acc": 0.9, "grad_norm": -1.5})),
        ("loss=0.3", (None, {"loss": 0.3})),
        # SkyPilot's prefix and terminal colours are not part of the line.
        ("\x1b[36m(sd-x-1, pid=2345)\x1b[0m step=4 loss=0.5", (4, {"loss": 0.5})),
        ('(head, rank=0, pid=1) SKYDECK {"step": 9, "loss": 0.9}', (9, {"loss": 0.9})),
        # A progress bar rewritten with \r: what the terminal shows last.
        ("10%|#   |\rstep=7 loss=0.1", (7, {"loss": 0.1})),
        # Not metric lines.
        ("hello lr=0.1 name=a b", None),
        ("epoch 1 loss=0.3", None),
        ("step=5", None),
        ("training with {'lr': '0.1'}", None),
        ('SKYDECK {"step": -1, "loss": 1}', None),
        ('SKYDECK {"step": 1.5, "loss": 1}', None),
        ('SKYDECK {"step": "3", "loss": 1}', None),
        ('SKYDECK ["loss", 1]', None),
        ('SKYDECK {"loss": 1', None),
        ('SKYDECKS {"loss": 1}', None),
        ("x" * 9000 + " loss=1", None),
    ],
)
def test_line_formats(line, expected):
    assert parse(line) == expected


def test_a_pattern_with_named_groups_and_one_with_name_value_pairs():
    pattern = r"Epoch (?P<step>\d+).*?loss (?P<loss>[0-9.e+-]+)(?:.*?acc (?P<acc>[0-9.]+))?"
    assert parse("Epoch 12: loss 0.25 acc 0.5", pattern) == (12, {"loss": 0.25, "acc": 0.5})
    assert parse("Epoch 13: loss 0.2", pattern) == (13, {"loss": 0.2})
    assert parse("nothing here", pattern) is None
    pairs = r"(?P<name>[a-z_]+): (?P<value>[0-9.]+)"
    assert parse("iter 5 | loss: 0.25 | acc: 0.5", pairs) == (None, {"loss": 0.25, "acc": 0.5})
    # The built-in formats still work beside a pattern.
    assert parse('SKYDECK {"step": 1, "loss": 2}', pattern) == (1, {"loss": 2.0})


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "Give a regular expression"),
        ("(?P<loss>[0-9.]+", "Not a regular expression"),
        (r"loss [0-9.]+", "Name a group for each metric"),
        (r"(?P<step>\d+)", "Name a group for each metric"),
        (r"(?P<name>\w+)", "go together"),
        ("x" * 501, "over 500 characters"),
    ],
)
def test_a_pattern_that_cannot_be_used_is_refused_saying_why(pattern, message):
    with pytest.raises(ValidationError) as caught:
        metrics.check_pattern(pattern)
    assert message in " ".join(caught.value.messages)
    # A stored pattern that no longer compiles is left out, with the reason, and the built-in formats go on.
    if pattern:
        parser = metrics.LineParser(pattern)
        assert "not used" in parser.error and parser.parse("loss=1").values == {"loss": 1.0}


def test_goal_of_a_metric_follows_its_name():
    assert [metrics.goal_for(n) for n in ("loss", "val/loss", "error_rate", "accuracy", "reward", "f1")] == [
        "min",
        "min",
        "min",
        "max",
        "max",
        "max",
    ]


# --- reading by byte offset ------------------------------------------------------------------------


@pytest.fixture
def log_file(settings):
    path = Path(settings.VAR_DIR) / "logs" / "local" / "metrics-test.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    yield path
    path.unlink(missing_ok=True)


def test_reading_takes_complete_lines_and_continues_where_it_stopped(log_file):
    parser = metrics.LineParser()
    log_file.write_text("step=1 loss=1\nhello\nloss=0.5\nstep=3 lo")
    first = metrics.read_new(str(log_file), 0, 0, parser)
    assert [(n, s, v) for n, s, v, _ in first.points] == [("loss", 1, 1.0), ("loss", 3, 0.5)]  # no step: line 3
    assert first.line == 3 and first.offset == len(b"step=1 loss=1\nhello\nloss=0.5\n")
    with open(log_file, "a") as fh:
        fh.write("ss=0.25\nstep=4 loss=0.2")
    second = metrics.read_new(str(log_file), first.offset, first.line, parser)
    assert [(s, v) for _, s, v, _ in second.points] == [(3, 0.25)] and second.line == 4
    # The job has ended: its last line, without a newline, is read too.
    last = metrics.read_new(str(log_file), second.offset, second.line, parser, final=True)
    assert [(s, v) for _, s, v, _ in last.points] == [(4, 0.2)] and last.at_end


def test_a_copy_started_afresh_is_read_again_from_its_start(log_file):
    parser = metrics.LineParser()
    log_file.write_text("step=1 loss=1\nstep=2 loss=2\n")
    read = metrics.read_new(str(log_file), 0, 0, parser)
    log_file.write_text("step=1 loss=1\n")
    again = metrics.read_new(str(log_file), read.offset, read.line, parser)
    assert [(s, v) for _, s, v, _ in again.points] == [(1, 1.0)] and again.offset == len(b"step=1 loss=1\n")


def test_a_path_outside_the_log_folders_is_not_read(tmp_path):
    outside = tmp_path / "secret.log"
    outside.write_text("loss=1\n")
    read = metrics.read_new(str(outside), 0, 0, metrics.LineParser(), final=True)
    assert read.points == [] and read.at_end


# --- storing once, within bounds --------------------------------------------------------------------


def points(job, name="loss"):
    return list(MetricPoint.objects.filter(job=job, name=name).order_by("step").values_list("step", "value"))


def test_a_point_is_stored_once_however_often_it_is_read(log_file):
    job = JobFactory(status="RUNNING", log_path=str(log_file))
    log_file.write_text("".join(f"step={i} loss={1 / i}\n" for i in range(1, 101)))
    metrics.parse_job(job)
    metrics.parse_job(job)  # nothing new
    MetricCursor.objects.filter(job=job).update(offset=0, line=0)  # read it all again, as after a lost cursor
    job.refresh_from_db()
    metrics.parse_job(job)
    assert len(points(job)) == 100
    series = MetricSeries.objects.get(job=job, name="loss")
    assert (series.points, series.first_step, series.last_step, series.last_value) == (100, 1, 100, 0.01)
    assert (series.min_value, series.max_value, series.attempt, series.experiment_id) == (
        0.01,
        1.0,
        job.attempt,
        job.experiment_id,
    )


def test_a_second_reader_with_the_same_cursor_stores_nothing(log_file):
    job = JobFactory(status="RUNNING", log_path=str(log_file))
    log_file.write_text("step=1 loss=1\n")
    MetricCursor.objects.create(job=job)
    stale = type(job).objects.get(pk=job.pk)  # a second worker that read the cursor at the same time
    stale.metric_cursor  # noqa: B018 - loads its copy of the cursor now
    metrics.parse_job(job)
    with open(log_file, "a") as fh:
        fh.write("step=2 loss=2\n")
    metrics.parse_job(stale)  # its cursor (offset 0) is out of date: the swap changes no row
    assert points(job) == [(1, 1.0)]
    assert MetricCursor.objects.get(job=job).line == 1


def test_past_the_limit_older_points_are_thinned_and_the_series_says_so(log_file, settings):
    settings.SKYDECK_METRIC_MAX_POINTS = 100
    job = JobFactory(status="RUNNING", log_path=str(log_file))
    log_file.write_text("".join(f"step={i} loss={i}\n" for i in range(1, 251)))
    result = metrics.parse_job(job)
    series = MetricSeries.objects.get(job=job, name="loss")
    stored = points(job)
    assert series.points == len(stored) <= 100 and series.thinned == 250 - len(stored) == result.thinned
    assert stored[0] == (1, 1.0)  # the first point stays
    # The newest half is whole; before dense_from_step only some points are left.
    dense = [s for s, _ in stored if s >= series.dense_from_step]
    assert dense == list(range(series.dense_from_step, 251)) and len(dense) >= 50
    assert series.min_value == 1 and series.max_value == 250 and series.last_value == 250
    # Reading the output again does not bring the thinned points back.
    MetricCursor.objects.filter(job=job).update(offset=0, line=0)
    job.refresh_from_db()
    metrics.parse_job(job)
    assert points(job) == stored
    # More points keep the series under the limit.
    with open(log_file, "a") as fh:
        fh.write("".join(f"step={i} loss={i}\n" for i in range(251, 401)))
    metrics.parse_job(job)
    series.refresh_from_db()
    assert series.points == len(points(job)) <= 100 and series.last_step == 400


def test_too_many_series_are_left_out_and_counted(log_file, settings):
    settings.SKYDECK_METRIC_MAX_SERIES = 3
    job = JobFactory(status="RUNNING", log_path=str(log_file))
    log_file.write_text("step=1 a=1 b=2 c=3 d=4 e=5\nstep=2 a=1 e=5\n")
    metrics.parse_job(job)
    assert set(MetricSeries.objects.filter(job=job).values_list("name", flat=True)) == {"a", "b", "c"}
    assert MetricCursor.objects.get(job=job).ignored == 3


def test_an_ended_job_is_read_to_its_end_once_and_then_left_alone(log_file):
    job = JobFactory(status="SUCCEEDED", log_path=str(log_file), log_complete=True)
    log_file.write_text("step=1 loss=1\nstep=2 loss=0.5")
    metrics.parse_job(job)
    cursor = MetricCursor.objects.get(job=job)
    assert cursor.complete and points(job) == [(1, 1.0), (2, 0.5)]
    assert job.pk not in [j.pk for j in metrics.jobs_to_parse()]


def test_the_pass_reads_active_unfinished_and_new_jobs_only(log_file):
    running = JobFactory(status="RUNNING", log_path=str(log_file))
    ended = JobFactory(status="SUCCEEDED", log_path=str(log_file))
    done = JobFactory(status="SUCCEEDED", log_path=str(log_file))
    MetricCursor.objects.create(job=done, complete=True)
    unfinished = JobFactory(status="FAILED", log_path=str(log_file))
    MetricCursor.objects.create(job=unfinished)
    no_log = JobFactory(status="SUCCEEDED", log_path="")
    found = [j.pk for j in metrics.jobs_to_parse()]
    assert found[0] == running.pk and set(found) == {running.pk, ended.pk, unfinished.pk}
    assert no_log.pk not in found


def test_the_pass_is_a_heartbeat_and_one_runs_at_a_time(log_file):
    JobFactory(status="SUCCEEDED", log_path=str(log_file))
    log_file.write_text("step=1 loss=1\n")
    parsed = run_parse_metrics()
    assert parsed.points == 1 and parsed.completed == 1
    beat = Heartbeat.objects.get(name="metrics")
    assert beat.ok and "1 points" in beat.summary and beat.lease_holder == ""
    Heartbeat.try_lease("metrics", 30, "another:1:x")
    with pytest.raises(PassInProgress):
        run_parse_metrics()


# --- the experiment's pattern ----------------------------------------------------------------------------


def test_setting_a_pattern_reads_every_attempt_again_and_is_an_event(log_file, owner, other_user):
    exp = ExperimentFactory(name="own-format")
    job = JobFactory(experiment=exp, status="SUCCEEDED", log_path=str(log_file))
    log_file.write_text("Epoch 1: loss 0.9\nEpoch 2: loss 0.5\nstep=3 loss=0.25\n")
    metrics.parse_job(job)
    assert points(job) == [(3, 0.25)]
    with pytest.raises(PermissionDenied):
        metrics.set_pattern(actor(other_user), exp, r"Epoch (?P<step>\d+): loss (?P<loss>[0-9.]+)")
    with pytest.raises(ValidationError) as caught:
        metrics.set_pattern(actor(owner), exp, "(?P<loss>")
    assert "pattern" in caught.value.message_dict
    assert metrics.set_pattern(actor(owner), exp, r"Epoch (?P<step>\d+): loss (?P<loss>[0-9.]+)")
    assert not metrics.set_pattern(actor(owner), exp, r"Epoch (?P<step>\d+): loss (?P<loss>[0-9.]+)")
    job.refresh_from_db()
    metrics.parse_job(job)
    assert points(job) == [(1, 0.9), (2, 0.5), (3, 0.25)]
    event = exp.events.get(kind=Event.Kind.EDIT)
    assert "Metric pattern set to" in event.message and event.user == owner
    assert metrics.set_pattern(actor(owner), exp, "")
    assert not MetricPattern.objects.filter(experiment=exp).exists()


def test_a_pattern_that_takes_too_long_is_left_out_and_the_experiment_says_why(log_file, owner, monkeypatch):
    exp = ExperimentFactory(name="slow-pattern")
    job = JobFactory(experiment=exp, status="SUCCEEDED", log_path=str(log_file), log_complete=True)
    metrics.set_pattern(actor(owner), exp, r"(?P<name>\w+): (?P<value>[0-9.]+)")
    monkeypatch.setattr(metrics, "PATTERN_TIMEOUT", 1e-9)
    pairs = " ".join(f"k{i}: {i}.5" for i in range(300))
    log_file.write_text("".join(f"{pairs}\nstep={i} loss={i}\n" for i in range(1, 6)))
    job.refresh_from_db()
    metrics.parse_job(job)
    # The built-in formats were still read; the pattern was dropped after three slow lines.
    assert points(job) == [(i, float(i)) for i in range(1, 6)]
    [problem] = metrics.experiment_metrics(exp)["problems"]
    assert problem["attempt"] == job.attempt and "took over" in problem["message"]


# --- comparing experiments by a metric --------------------------------------------------------------------


def _series(exp, attempt, name, last, low, high):
    job = JobFactory(experiment=exp, attempt=attempt)
    return MetricSeries.objects.create(
        job=job, experiment=exp, attempt=attempt, name=name, points=1, last_value=last, min_value=low, max_value=high
    )


def test_the_list_can_show_and_sort_by_a_metric():
    a, b, c = (ExperimentFactory(name=n) for n in ("a", "b", "c"))
    _series(a, 1, "loss", last=0.5, low=0.2, high=2.0)
    _series(a, 2, "loss", last=0.4, low=0.4, high=1.0)  # the latest attempt's last value
    _series(b, 1, "loss", last=0.3, low=0.3, high=3.0)
    latest = metrics.order_by_metric(Experiment.objects.all(), "loss")
    assert [(e.name, e.metric_value) for e in latest] == [("b", 0.3), ("a", 0.4), ("c", None)]
    best = metrics.order_by_metric(Experiment.objects.all(), "loss", value="best", goal="min")
    assert [(e.name, e.metric_value) for e in best] == [("a", 0.2), ("b", 0.3), ("c", None)]
    highest = metrics.order_by_metric(Experiment.objects.all(), "loss", value="best", goal="max", descending=True)
    assert [(e.name, e.metric_value) for e in highest] == [("b", 3.0), ("a", 2.0), ("c", None)]
    assert metrics.metric_names() == ["loss"]
    assert c.pk and metrics.values_by_experiment([a.pk, b.pk, c.pk], "loss") == {a.pk: 0.4, b.pk: 0.3}


# --- end to end: real local jobs, the real control loop ------------------------------------------------------


def drive_until(predicate, timeout=60, message="state"):
    """Poll, reconcile and read metrics, as beat would, until the predicate holds."""

    def step():
        run_poll()
        run_reconcile_all()
        metrics.parse_all()
        return predicate()

    return wait_for(step, timeout=timeout, interval=0.2, message=message)


def test_a_real_job_printing_ten_thousand_metric_lines_is_stored_once(local_root, owner):
    script = (
        "import json, sys\n"
        "for i in range(1, 10001):\n"
        "    print('SKYDECK ' + json.dumps({'step': i, 'loss': 1.0 / i}))\n"
        "    if i % 2500 == 0: sys.stdout.flush()\n"
        "print('done')\n"
    )
    exp = ExperimentFactory(name="ten-thousand", command=f"{sys.executable} -c {shlex.quote(script)}")
    set_state(exp, "RUNNING", owner)
    drive_until(
        lambda: MetricCursor.objects.filter(job__experiment=exp, complete=True).exists(), message="metrics read"
    )
    job = exp.jobs.get()
    assert job.status == "SUCCEEDED"
    stored = points(job)
    assert len(stored) == 10_000 and stored[0] == (1, 1.0) and stored[-1] == (10_000, 1e-4)
    series = MetricSeries.objects.get(job=job)
    assert (series.points, series.thinned, series.last_step) == (10_000, 0, 10_000)

    # Re-reading the whole output (a worker that lost its place) adds nothing.
    MetricCursor.objects.filter(job=job).update(offset=0, line=0, complete=False)
    metrics.parse_all()
    assert MetricPoint.objects.filter(job=job).count() == 10_000

    # A restart is a new attempt: its points join the experiment's, the first attempt's stay as they were.
    restart(Experiment.objects.get(pk=exp.pk), owner)
    drive_until(
        lambda: MetricCursor.objects.filter(job__experiment=exp, complete=True).count() == 2, message="attempt 2"
    )
    assert MetricPoint.objects.filter(job__experiment=exp).count() == 20_000
    data = metrics.experiment_metrics(exp)
    assert [(s["attempt"], len(s["steps"])) for s in data["series"]] == [(1, 10_000), (2, 10_000)]
    assert data["names"] == ["loss"] and not data["live"]
    # Read on from the cursor: nothing new.
    assert all(not s["steps"] for s in metrics.experiment_metrics(exp, since=data["cursor"])["series"])


def test_the_example_training_script_reports_a_falling_loss(local_root, owner):
    exp = ExperimentFactory(name="example-train", command=TRAIN, flags={"steps": 20, "step_seconds": 0, "lr": 0.003})
    set_state(exp, "RUNNING", owner)
    drive_until(lambda: MetricCursor.objects.filter(job__experiment=exp, complete=True).exists(), message="read")
    job = exp.jobs.get()
    loss = points(job)
    assert [s for s, _ in loss] == list(range(1, 21))
    assert loss[-1][1] < loss[0][1] / 2
    assert set(MetricSeries.objects.filter(job=job).values_list("name", flat=True)) == {"loss", "accuracy", "lr"}
    assert "done" in Path(job.log_path).read_text()


def test_another_users_experiment_pattern_cannot_be_set(owner):
    exp = ExperimentFactory(name="theirs", owner=UserFactory(username="someone"))
    with pytest.raises(PermissionDenied):
        metrics.set_pattern(actor(owner), exp, r"loss (?P<loss>\d+)")
