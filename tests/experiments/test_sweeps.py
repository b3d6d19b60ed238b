"""Sweeps: grid and random expansion, naming, creation, actions, and max_concurrent in the reconciler."""

from dataclasses import replace

import pytest
from django.core.exceptions import ValidationError

from experiments import intent, reconciler, sweeps
from experiments.models import Experiment, Job, Sweep
from tests.factories import ExperimentFactory, FlagSchemaFactory, JobFactory, SweepFactory
from tests.support import wait_for

ACTOR = intent.Actor.system("cli")

# --- expansion ------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_last_flag_fastest():
    points = sweeps.expand("grid", {"nodes": [1, 2], "layers": [2, 4, 8, 16]})
    assert len(points) == 8
    assert points[:3] == [{"layers": 2, "nodes": 1}, {"layers": 2, "nodes": 2}, {"layers": 4, "nodes": 1}]
    assert {(p["nodes"], p["layers"]) for p in points} == {(n, depth) for n in (1, 2) for depth in (2, 4, 8, 16)}


def test_random_samples_from_lists_and_ranges_repeatably():
    params = {
        "opt": ["adam", "sgd"],
        "lr": {"min": 1e-5, "max": 1e-1, "log": True},
        "layers": {"min": 2, "max": 8},
        "dropout": {"min": 0.0, "max": 0.5},
    }
    first = sweeps.expand("random", params, samples=20, seed=7)
    assert first == sweeps.expand("random", params, samples=20, seed=7)
    assert first != sweeps.expand("random", params, samples=20, seed=8)
    assert len(first) == 20
    for p in first:
        assert p["opt"] in ("adam", "sgd")
        assert 1e-5 <= p["lr"] <= 1e-1 and isinstance(p["lr"], float)
        assert 2 <= p["layers"] <= 8 and isinstance(p["layers"], int)
        assert 0.0 <= p["dropout"] <= 0.5


def test_random_int_ranges_can_be_forced_to_floats_and_back():
    points = sweeps.expand(
        "random",
        {"x": {"min": 1, "max": 2, "type": "float"}, "y": {"min": 1.0, "max": 9.0, "type": "int"}},
        samples=10,
        seed=1,
    )
    assert all(isinstance(p["x"], float) and isinstance(p["y"], int) for p in points)


@pytest.mark.parametrize(
    ("kind", "parameters", "samples", "field"),
    [
        ("grid", {}, None, "parameters"),
        ("grid", {"lr": []}, None, "parameters"),
        ("grid", {"lr": {"min": 0, "max": 1}}, None, "parameters"),
        ("grid", {"bad key": [1]}, None, "parameters"),
        ("grid", {"lr": [[1]]}, None, "parameters"),
        ("grid", {"a": list(range(30)), "b": list(range(30))}, None, "parameters"),
        ("random", {"lr": [1]}, None, "samples"),
        ("random", {"lr": [1]}, 0, "samples"),
        ("random", {"lr": {"min": 1, "max": 0}}, 3, "parameters"),
        ("random", {"lr": {"min": 0, "max": 1, "log": True}}, 3, "parameters"),
        ("random", {"lr": {"min": 0, "max": 1, "step": 2}}, 3, "parameters"),
        ("spiral", {"lr": [1]}, None, "kind"),
    ],
)
def test_bad_sweeps_are_refused_by_field(kind, parameters, samples, field):
    with pytest.raises(ValidationError) as exc:
        sweeps.validate_sweep(kind, parameters, samples)
    assert field in exc.value.message_dict


# --- naming ---------------------------------------------------------------------------------


def test_children_are_named_after_the_base_and_their_values():
    labels = sweeps._labels(["trainer.optimizer.lr", "model.layers", "use_amp"])
    assert sweeps.child_name(
        "base", {"trainer.optimizer.lr": 0.001, "model.layers": 4, "use_amp": True}, labels, set()
    ) == ("base-layers4-lr0p001-use-amptrue")
    assert sweeps.child_name("base", {"model.layers": -1}, sweeps._labels(["model.layers"]), set()) == "base-layersm1"


def test_names_use_whole_paths_when_last_parts_clash():
    labels = sweeps._labels(["a.lr", "b.lr"])
    assert sweeps.child_name("x", {"a.lr": 1, "b.lr": 2}, labels, set()) == "x-a-lr1-b-lr2"


def test_long_names_are_shortened_and_clashes_numbered():
    labels = sweeps._labels(["some_very_long_flag_name", "another_quite_long_flag_name"])
    values = {"some_very_long_flag_name": "a-rather-long-value", "another_quite_long_flag_name": "another-long-value"}
    name = sweeps.child_name("a-long-base-experiment-name", values, labels, set())
    assert len(name) <= 60 and name.startswith("a-long-base-experiment-name")
    assert sweeps.child_name("b", {"x": 1}, {"x": "x"}, {"b-x1"}) == "b-x1-2"
    assert sweeps.child_name("b", {"x": 1}, {"x": "x"}, {"b-x1", "b-x1-2"}) == "b-x1-3"


# --- creation and actions -----------------------------------------------------------------------


@pytest.fixture
def base(db):
    return ExperimentFactory(
        name="train",
        command="python train.py",
        flags={"lr": 0.1, "epochs": 3},
        accelerators="A100:1",
        tags=["baseline"],
        restart_policy="on_failure",
    )


def test_create_sweep_makes_tagged_children_from_the_base(base, owner):
    sweep = sweeps.create_sweep(
        ACTOR,
        name="grid-1",
        base=base,
        kind="grid",
        parameters={"nodes": [1, 2], "layers": [2, 4, 8, 16]},
        max_concurrent=3,
    )
    children = list(sweep.experiments.order_by("id"))
    assert len(children) == 8
    first = children[0]
    assert first.name == "train-layers2-nodes1"
    assert first.flags == {"lr": 0.1, "epochs": 3, "layers": 2, "nodes": 1}
    assert (
        first.command == "python train.py" and first.accelerators == "A100:1" and first.restart_policy == "on_failure"
    )
    assert first.tags == ["baseline", "sweep:grid-1"] and first.sweep == sweep
    assert all(c.desired_state == "STOPPED" for c in children)
    assert first.events.filter(kind="created").exists()
    assert sweeps.counts(sweep)["total"] == 8


def test_create_sweep_running_asks_each_child_to_run(base, django_capture_on_commit_callbacks, enqueued):
    with django_capture_on_commit_callbacks(execute=True):
        sweep = sweeps.create_sweep(
            ACTOR, name="go", base=base, kind="grid", parameters={"lr": [1, 2]}, desired_state="RUNNING"
        )
    assert enqueued() == [
        ("experiments.tasks.reconcile_experiments", (sorted(sweep.experiments.values_list("pk", flat=True)),))
    ]
    assert {c.run_number for c in sweep.experiments.all()} == {1}


def test_create_random_sweep_stores_its_seed(base):
    sweep = sweeps.create_sweep(
        ACTOR, name="rnd", base=base, kind="random", parameters={"lr": {"min": 0.001, "max": 0.1}}, samples=4
    )
    assert sweep.seed is not None and sweep.experiments.count() == 4
    again = sweeps.expand("random", sweep.parameters, sweep.samples, sweep.seed)
    assert sorted(c.flags["lr"] for c in sweep.experiments.all()) == sorted(p["lr"] for p in again)


def test_create_sweep_refuses_values_the_schema_refuses(base):
    FlagSchemaFactory(path="layers", type="integer", source="model")
    with pytest.raises(ValidationError) as exc:
        sweeps.create_sweep(ACTOR, name="bad", base=base, kind="grid", parameters={"layers": [2, "deep"]})
    assert "layers" in str(exc.value.message_dict["flags"])
    assert not Sweep.objects.exists() and Experiment.objects.count() == 1


def test_child_names_avoid_existing_experiments(base):
    ExperimentFactory(name="train-lr1")
    sweep = sweeps.create_sweep(ACTOR, name="s", base=base, kind="grid", parameters={"lr": [1, 2]})
    assert sorted(sweep.experiments.values_list("name", flat=True)) == ["train-lr1-2", "train-lr2"]


def test_start_stop_and_rerun_failed(base):
    sweep = sweeps.create_sweep(ACTOR, name="s", base=base, kind="grid", parameters={"lr": [1, 2, 3]})
    assert sweeps.set_state(ACTOR, sweep, "RUNNING") == 3
    assert sweeps.set_state(ACTOR, sweep, "RUNNING") == 0
    failed = sweep.experiments.order_by("id").first()
    Experiment.objects.filter(pk=failed.pk).update(phase="FAILED")
    assert sweeps.rerun_failed(ACTOR, sweep) == 1
    failed.refresh_from_db()
    assert failed.run_number == 2 and failed.events.filter(kind="restart").exists()
    assert sweeps.set_state(ACTOR, sweep, "TERMINATED") == 3


# --- max_concurrent, held by the reconciler ------------------------------------------------------------


def active_count(sweep):
    return Job.objects.active().filter(experiment__sweep=sweep).count()


def test_the_reconciler_keeps_at_most_max_concurrent_running(base, local_root, tmp_path):
    """A real local run: children wait for a release file; as one finishes the next starts."""
    gate = tmp_path / "gate"
    gate.mkdir()
    base.command = f"sh -c 'while [ ! -e {gate}/\"$1\" ]; do sleep 0.05; done' gate"
    base.flags = {}
    base.backend = "local"
    base.save()
    sweep = sweeps.create_sweep(
        ACTOR,
        name="held",
        base=base,
        kind="grid",
        parameters={"i": [1, 2, 3, 4, 5]},
        max_concurrent=2,
        desired_state="RUNNING",
    )
    from experiments.tasks import run_poll

    reconciler.reconcile_all()
    assert active_count(sweep) == 2
    waiting = sweep.experiments.filter(status_reason="WaitingForSweepSlot")
    assert waiting.count() == 3
    finished = 0
    while finished < 5:
        running = list(Job.objects.active().filter(experiment__sweep=sweep))
        assert 0 < len(running) <= 2
        # Release one: its flag "i=<n>" is the file it waits for.
        job = running[0]
        (gate / f"i={job.flags['i']}").touch()
        wait_for(
            lambda job=job: (run_poll(), Job.objects.get(pk=job.pk).status == "SUCCEEDED")[1],
            timeout=60,
            message=f"{job.name} to finish",
        )
        finished += 1
        assert active_count(sweep) <= 2
        assert active_count(sweep) == min(2, 5 - finished)
    assert sweep.experiments.filter(phase="SUCCEEDED").count() == 5


def test_the_limit_is_rechecked_when_the_job_is_written(base, monkeypatch, local_root):
    """Two reconcilers that both saw a free slot: the second is stopped where it writes its Job."""
    sweep = SweepFactory(name="race", base=base, max_concurrent=1)
    a = ExperimentFactory(name="a", sweep=sweep, desired_state="RUNNING", run_number=1)
    b = ExperimentFactory(name="b", sweep=sweep, desired_state="RUNNING", run_number=1, command="sleep 30")
    JobFactory(experiment=a, status="RUNNING", attempt=1, run_number=1)
    # What the reconciler read before the other launch: no job of the sweep in flight.
    gather = reconciler.Facts.gather.__func__
    monkeypatch.setattr(
        reconciler.Facts, "gather", classmethod(lambda cls, exps: replace(gather(cls, exps), sweep_active={}))
    )
    outcome = reconciler.reconcile(b.pk)
    b.refresh_from_db()
    assert not b.jobs.exists()
    assert b.status_reason == "WaitingForSweepSlot", outcome
