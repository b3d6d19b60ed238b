"""manage.py apply and manage.py export, on a real database."""

import io
import sys
import textwrap
from io import StringIO

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from experiments.models import Event, Experiment, Job, Sweep
from tests.factories import ExperimentFactory, JobFactory
from tests.support import ROOT

pytestmark = pytest.mark.django_db

FILE = """\
version: 1
experiments:
  - name: alpha
    command: python train.py
    flags: {lr: 0.1}
    backend: local
    desired_state: RUNNING
  - name: beta
    command: echo beta
    backend: local
sweeps:
  - name: depth
    base: alpha
    parameters: {layers: [2, 4]}
"""


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def skydeck_file(tmp_path):
    path = tmp_path / "skydeck.yaml"

    def write(text=FILE):
        path.write_text(textwrap.dedent(text))
        return str(path)

    return write


def snapshot():
    """Everything apply could change: the rows and the Events."""
    return (
        sorted(Experiment.objects.values_list("name", "generation", "desired_state", "flags", "command")),
        Event.objects.count(),
        Sweep.objects.count(),
        Job.objects.count(),
    )


def test_dry_run_prints_the_plan_and_changes_nothing(skydeck_file):
    ExperimentFactory(name="beta", command="echo old")
    before = snapshot()
    out, _ = run("apply", "-f", skydeck_file(), "--dry-run")
    assert snapshot() == before
    assert "(dry run)" in out.splitlines()[0]
    assert "  + create    experiment alpha: desired RUNNING" in out
    assert '  ~ update    experiment beta\n        command: "echo old" → "echo beta"' in out
    assert "  + create    sweep depth: from alpha: 2 experiments (alpha-layers2, alpha-layers4), desired STOPPED" in out
    assert "2 to create, 1 to update." in out
    assert out.rstrip().endswith("Dry run: nothing was changed.")


def test_apply_creates_updates_and_is_idempotent(skydeck_file):
    ExperimentFactory(name="beta", command="echo old")
    path = skydeck_file()
    out, _ = run("apply", "-f", path)
    assert "Applied 3 changes." in out
    alpha = Experiment.objects.get(name="alpha")
    assert (alpha.desired_state, alpha.flags, alpha.run_number) == ("RUNNING", {"lr": 0.1}, 1)
    assert Experiment.objects.get(name="beta").command == "echo beta"
    assert sorted(Sweep.objects.get(name="depth").experiments.values_list("name", flat=True)) == [
        "alpha-layers2",
        "alpha-layers4",
    ]
    # Every Event of the change names the file, as the pages' Events name the page's user.
    events = Event.objects.filter(actor="file")
    assert events.count() == 4 and all(e.data["file"] == path for e in events)
    before = snapshot()
    out, _ = run("apply", "-f", path)
    assert snapshot() == before
    assert "3 unchanged." in out and "Nothing to change." in out


def test_a_state_change(skydeck_file):
    path = skydeck_file()
    run("apply", "-f", path)
    out, _ = run("apply", "-f", skydeck_file(FILE.replace("desired_state: RUNNING", "desired_state: TERMINATED")))
    assert "  > state     experiment alpha\n        desired state: RUNNING → TERMINATED" in out
    assert Experiment.objects.get(name="alpha").desired_state == "TERMINATED"
    assert Event.objects.filter(kind="desired_state", data__to="TERMINATED", data__file=path).count() == 1


def test_prune_never_deletes_an_experiment_with_an_active_job(skydeck_file):
    path = skydeck_file()
    run("apply", "-f", path)
    busy = ExperimentFactory(name="busy")
    JobFactory(experiment=busy, attempt=1, status="RUNNING")
    ExperimentFactory(name="stray")
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", path, "--prune")
    assert "Nothing applied: 1 refused" in str(excinfo.value)
    assert snapshot() == before
    out = StringIO()
    with pytest.raises(CommandError, match="applying it would change nothing"):
        call_command("apply", "-f", path, "--prune", "--dry-run", stdout=out)
    assert "  - delete    experiment stray" in out.getvalue()
    assert "  ! refused   experiment busy: not in the file, but attempt 1 is RUNNING" in out.getvalue()
    busy.jobs.update(status="SUCCEEDED")
    out, _ = run("apply", "-f", path, "--prune")
    assert not Experiment.objects.filter(name__in=["busy", "stray"]).exists()
    assert Experiment.objects.filter(name="alpha-layers2").exists()  # the sweep's, which the file names


def test_a_malformed_file_names_the_line_and_field_and_changes_nothing(skydeck_file):
    run("apply", "-f", skydeck_file())
    before = snapshot()
    broken = FILE.replace("lr: 0.1}", "lr: 0.2}\n    num_nodes: -1").replace("echo beta", "echo new")
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", skydeck_file(broken))
    message = str(excinfo.value)
    assert "cannot be applied; nothing changed" in message
    assert "line 6: experiments[0].num_nodes: Input should be greater than or equal to 1." in message
    assert snapshot() == before
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", skydeck_file("experiments:\n  - name: x\n    command: [unclosed\n"))
    assert "line 4: not valid YAML" in str(excinfo.value)
    assert snapshot() == before


def test_an_unknown_field_is_refused(skydeck_file):
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", skydeck_file(FILE.replace("backend: local\n    desired", "backnd: local\n    desired")))
    assert (
        "line 6: experiments[0].backnd: unknown field: not a field of a SkyDeck experiment (did you mean 'backend'?)"
    ) in str(excinfo.value)
    assert not Experiment.objects.exists()


def test_the_backends_check_what_would_launch(skydeck_file, tmp_path):
    with pytest.raises(CommandError) as excinfo:
        run(
            "apply",
            "-f",
            skydeck_file(
                FILE.replace(
                    "backend: local\n    desired", f"backend: local\n    workdir: {tmp_path}/nope\n    desired"
                )
            ),
        )
    assert "alpha: local refuses it: workdir" in str(excinfo.value) and "does not exist" in str(excinfo.value)
    assert not Experiment.objects.exists()
    out, _ = run(
        "apply",
        "-f",
        skydeck_file(
            FILE.replace("backend: local\n    desired", f"backend: local\n    workdir: {tmp_path}/nope\n    desired")
        ),
        "--no-check",
        "--dry-run",
    )
    assert "+ create    experiment alpha" in out


def test_as_a_user_what_they_may_not_change_is_refused(skydeck_file, owner, other_user):
    ExperimentFactory(name="beta", command="echo old")  # the owner's
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", skydeck_file(), "--user", "other")
    assert "Nothing applied: 1 refused" in str(excinfo.value)
    assert not Experiment.objects.filter(name="alpha").exists()
    with pytest.raises(CommandError, match="No active user named 'nobody'"):
        run("apply", "-f", skydeck_file(), "--user", "nobody")


def test_a_missing_file():
    with pytest.raises(CommandError, match="Cannot read /nonexistent/skydeck.yaml"):
        run("apply", "-f", "/nonexistent/skydeck.yaml")


def test_the_example_file_applies(tmp_path):
    out, _ = run("apply", "-f", str(ROOT / "examples" / "skydeck.yaml"), "--no-check")
    assert Experiment.objects.get(name="hello-file").workdir == str(ROOT / "examples")
    assert Experiment.objects.get(name="gpt-small").command == "torchrun --nproc_per_node=8 train.py"
    assert Sweep.objects.get(name="hello-depth").experiments.count() == 3
    out, _ = run("apply", "-f", str(ROOT / "examples" / "skydeck.yaml"), "--no-check")
    assert "Nothing to change." in out


@pytest.mark.skypilot
def test_skypilots_own_loader_checks_what_apply_would_launch(skydeck_file):
    """Imports SkyPilot in the test process (seconds): marked so that a quick run leaves it out."""
    bad = FILE.replace("backend: local\n    desired", "backend: skypilot\n    accelerators: 'A100:x'\n    desired")
    with pytest.raises(CommandError) as excinfo:
        run("apply", "-f", skydeck_file(bad))
    assert "alpha: skypilot refuses it" in str(excinfo.value) and "A100:x" in str(excinfo.value)
    assert not Experiment.objects.exists()
    good = FILE.replace("backend: local\n    desired", "backend: skypilot\n    accelerators: A100:8\n    desired")
    run("apply", "-f", skydeck_file(good), "--dry-run")


# --- export -------------------------------------------------------------------------------------------------


def test_export_writes_what_apply_reads_back(skydeck_file, tmp_path):
    run("apply", "-f", skydeck_file())
    ExperimentFactory(name="gamma", tags=["team"], command="echo g")
    out, _ = run("export")
    data = yaml.safe_load(out)
    assert [e["name"] for e in data["experiments"]] == ["alpha", "beta", "gamma"]
    assert data["sweeps"][0]["name"] == "depth"
    target = tmp_path / "out.yaml"
    _, err = run("export", "-o", str(target))
    assert target.read_text() == out and "Wrote" in err
    before = snapshot()
    out2, _ = run("apply", "-f", str(target))
    assert snapshot() == before and "Nothing to change." in out2
    assert [e["name"] for e in yaml.safe_load(run("export", "--tag", "team")[0])["experiments"]] == ["gamma"]
    assert yaml.safe_load(run("export", "beta")[0])["experiments"][0]["name"] == "beta"
    with pytest.raises(CommandError, match="No experiment named nope"):
        run("export", "nope")


def test_restart_applies_a_spec_change_to_the_running_job(skydeck_file):
    path = skydeck_file()
    run("apply", "-f", path)
    alpha = Experiment.objects.get(name="alpha")
    JobFactory(experiment=alpha, attempt=1, status="RUNNING", run_number=alpha.run_number)
    changed = skydeck_file(FILE.replace("lr: 0.1", "lr: 0.2"))
    run("apply", "-f", changed)
    alpha.refresh_from_db()
    assert alpha.run_number == 1 and not Event.objects.filter(experiment=alpha, kind="restart").exists()
    run("apply", "-f", skydeck_file(FILE.replace("lr: 0.1", "lr: 0.3")), "--restart")
    alpha.refresh_from_db()
    assert alpha.run_number == 2 and Event.objects.get(experiment=alpha, kind="restart").data["file"] == path


def test_a_file_from_standard_input(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(FILE.encode())))
    out, _ = run("apply", "-f", "-", "--dry-run")
    assert out.startswith("Plan for skydeck.yaml (dry run):") and "3 to create." in out


def test_guardrails_are_part_of_the_file(skydeck_file):
    guarded = """\
    version: 1
    experiments:
      - name: capped
        command: python train.py
        backend: local
        max_cost: 10
        max_runtime_minutes: 90
        limit_action: TERMINATED
        stall_minutes: 15
        stall_action: flag
    sweeps:
      - name: capped-lr
        base: capped
        parameters: {lr: [0.1, 0.01]}
        max_cost: 25.5
    """
    run("apply", "-f", skydeck_file(guarded))
    exp = Experiment.objects.get(name="capped")
    assert (exp.max_cost, exp.max_runtime_minutes, exp.limit_action, exp.stall_minutes, exp.stall_action) == (
        10.0,
        90,
        "TERMINATED",
        15,
        "flag",
    )
    sweep = Sweep.objects.get(name="capped-lr")
    assert (sweep.max_cost, sweep.limit_action) == (25.5, "STOPPED")
    # Exported as written, and applying the export again changes nothing.
    out, _ = run("export")
    exported = yaml.safe_load(out)
    entry = next(e for e in exported["experiments"] if e["name"] == "capped")
    assert entry["max_cost"] == 10.0 and entry["stall_action"] == "flag" and entry["limit_action"] == "TERMINATED"
    assert next(s for s in exported["sweeps"] if s["name"] == "capped-lr")["max_cost"] == 25.5
    before = snapshot()
    run("apply", "-f", skydeck_file(out))
    assert snapshot() == before
    # A budget below zero is refused with the field named, and nothing changes.
    with pytest.raises(CommandError) as refused:
        run("apply", "-f", skydeck_file(guarded.replace("max_cost: 10", "max_cost: -1")))
    assert "max_cost" in str(refused.value)
    assert Experiment.objects.get(name="capped").max_cost == 10.0
