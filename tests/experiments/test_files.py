"""experiments.files: SkyPilot task YAML in and out, skydeck.yaml read, planned and applied, and the bulk plan."""

import importlib.util
import textwrap
from pathlib import Path

import pytest
import yaml

from experiments import files, intent
from experiments.models import Event, Experiment, Sweep
from tests.factories import ExperimentFactory, FlagSchemaFactory, JobFactory, UserFactory

pytestmark = pytest.mark.django_db

SYSTEM = intent.Actor.system("file")


def sky_example(name):
    """An example task YAML shipped in the installed skypilot package (found without importing it)."""
    spec = importlib.util.find_spec("sky")
    return Path(spec.submodule_search_locations[0]) / "recipes" / "examples" / name


def problems_of(excinfo):
    return [str(p) for p in excinfo.value.problems]


def task(text, **options):
    return files.experiment_from_task(textwrap.dedent(text), **options)


def skydeck(text, actor=SYSTEM, prune=False, base_dir=None):
    return files.plan(files.read_file(textwrap.dedent(text), base_dir=base_dir), actor, prune=prune)


def apply(text, actor=SYSTEM, **options):
    plan = skydeck(text, actor, prune=options.pop("prune", False), base_dir=options.pop("base_dir", None))
    return plan, files.apply(plan, actor, **options)


def counts():
    return Experiment.objects.count(), Event.objects.count(), Sweep.objects.count()


# --- a SkyPilot task YAML -> experiment ----------------------------------------------------------------

FULL_TASK = """\
name: train-gpt
resources:
  infra: aws/us-east-1
  accelerators: H100:8
  cpus: 32+
  memory: 256
  use_spot: true
  disk_size: 512
  image_id: docker:nvcr.io/nvidia/pytorch:24.01-py3
num_nodes: 2
workdir: /srv/code
envs:
  WANDB_PROJECT: gpt
  SEED: 7
setup: |
  pip install -r requirements.txt
run: |
  torchrun --nproc_per_node=8 train.py
"""


def test_a_full_task_becomes_an_experiment():
    e = task(FULL_TASK)
    assert (e.name, e.backend, e.desired_state) == ("train-gpt", "skypilot", "STOPPED")
    assert (e.infra, e.accelerators, e.cpus, e.memory, e.use_spot) == ("aws/us-east-1", "H100:8", "32+", "256", True)
    assert (e.disk_size, e.image_id, e.num_nodes, e.workdir) == (
        512,
        "docker:nvcr.io/nvidia/pytorch:24.01-py3",
        2,
        "/srv/code",
    )
    assert e.envs == {"WANDB_PROJECT": "gpt", "SEED": "7"}  # as SkyPilot's own loader: every value is text
    assert e.setup == "pip install -r requirements.txt\n"
    assert e.command == "torchrun --nproc_per_node=8 train.py\n" and e.flags == {}
    assert e.pk is None  # nothing is written by reading


def test_export_import_export_is_identical():
    first = intent.create(SYSTEM, task(FULL_TASK))
    exported = files.experiment_task_yaml(first)
    intent.delete(SYSTEM, [first])
    again = intent.create(SYSTEM, files.experiment_from_task(exported, source="train-gpt.yaml"))
    assert files.experiment_task_yaml(again) == exported
    assert yaml.safe_load(exported)["resources"]["autostop"] == 10  # SkyDeck's idle stop, as sky launch takes it


def test_flags_survive_the_round_trip():
    first = intent.create(
        SYSTEM,
        Experiment(name="lr", command="python train.py", flags={"lr": 0.001, "layers": 4, "amp": True, "note": "a b"}),
    )
    exported = files.experiment_task_yaml(first)
    assert yaml.safe_load(exported)["run"] == "python train.py amp=true layers=4 lr=0.001 'note=a b'"
    intent.delete(SYSTEM, [first])
    again = files.experiment_from_task(exported)
    assert again.command == "python train.py"
    assert again.flags == {"amp": True, "layers": 4, "lr": 0.001, "note": "a b"}
    assert files.experiment_task_yaml(intent.create(SYSTEM, again)) == exported


def test_skypilots_own_example_imports_and_exports_to_an_equivalent_task():
    path = sky_example("basic_cluster.yaml")
    original = yaml.safe_load(path.read_text())
    experiment = intent.create(SYSTEM, files.experiment_from_task(path.read_text(), source=path.name))
    assert experiment.name == "basic-cluster"  # the file's name: the task has none
    exported = yaml.safe_load(files.experiment_task_yaml(experiment))
    # SkyDeck adds the name and its idle stop; run loses only its trailing newline (build_command strips it).
    assert exported.pop("name") == "basic-cluster"
    assert exported["resources"].pop("autostop") == 10
    assert exported.pop("run") == original.pop("run").rstrip("\n")
    assert exported == original


def test_the_managed_job_example_too():
    path = sky_example("basic_managed_job.yaml")
    experiment = files.experiment_from_task(path.read_text(), source=path.name, name="managed")
    assert experiment.name == "managed" and experiment.setup == "pip install torch\n"
    assert experiment.command.startswith('echo "Running managed job..."')


def test_cloud_region_zone_and_one_candidate_are_taken():
    e = task(
        """
        resources:
          cloud: gcp
          region: us-central1
          zone: us-central1-a
        run: echo hi
        """,
        name="zoned",
    )
    assert e.infra == "gcp/us-central1/us-central1-a"
    e = task(
        """
        resources:
          accelerators: {A100: 8}
          any_of:
            - infra: slurm
        run: echo hi
        """,
        name="one",
    )
    assert (e.accelerators, e.infra) == ("A100:8", "slurm")
    assert task("resources: {region: us-east-1}\nrun: x", name="r").infra == "*/us-east-1"


def test_what_skydeck_cannot_pass_on_is_refused_with_its_line():
    with pytest.raises(files.FileInvalid) as excinfo:
        task(
            """\
            name: many
            resources:
              accelerators: {A100: 8, H100: 8}
              instance_type: p4d.24xlarge
            file_mounts:
              /data: s3://bucket
            runn: python train.py
            """
        )
    found = problems_of(excinfo)
    assert found.pop(0) == "task.yaml line 1: run: is missing: SkyDeck runs a command."
    assert found[0].startswith("task.yaml line 3: resources.accelerators: 2 candidate accelerators (A100:8, H100:8)")
    assert found[1].startswith("task.yaml line 4: resources.instance_type: SkyDeck cannot pass")
    assert found[2].startswith("task.yaml line 5: file_mounts: SkyDeck cannot pass file mounts on")
    assert found[3] == "task.yaml line 7: runn: unknown field: not a field of a SkyPilot task (did you mean 'run'?)."
    with pytest.raises(files.FileInvalid) as excinfo:
        task(
            """\
            resources:
              ordered:
                - accelerators: A100:8
                - accelerators: H100:8
            run: x
            """,
            name="ordered",
        )
    assert problems_of(excinfo) == [
        "task.yaml line 2: resources.ordered: 2 candidate resources: SkyDeck launches one set of resources per "
        "experiment and cannot pass a list of candidates on. Keep one, or make one experiment per candidate."
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("run: x\nworkdir: .", "workdir: a relative workdir ('.') means nothing to SkyDeck's worker"),
        ("run: x\nworkdir: {url: https://github.com/x/y}", "workdir: SkyDeck cannot pass a git workdir"),
        ("run: x\nenvs: {TOKEN: null}", "envs.TOKEN: has no value"),
        ("run: x\nnum_nodes: 0", "num_nodes: must be a whole number, at least 1."),
        ("run: x\nresources: {cpus: lots}", "resources.cpus: cpus must be a number, optionally followed by +"),
        ("run: x\nresources: {disk_size: big}", "resources.disk_size: disk_size must be a whole number of GB"),
        ("run: x\nresources: {infra: aws, cloud: gcp}", "resources.infra: give infra, or cloud/region/zone"),
        ("run: x\nresources: {autostop: {idle_minutes: 5, down: true}}", "resources.autostop.down: SkyDeck stops"),
        ("run: x\nresources: {image_id: {us-east-1: ami-1}}", "resources.image_id: SkyDeck passes on one image_id"),
        ("setup: x", "run: is missing"),
        ("run: [x", "not valid YAML"),
        ("- run: x", "a SkyPilot task is a mapping"),
    ],
)
def test_bad_tasks_say_what_and_where(text, message):
    with pytest.raises(files.FileInvalid) as excinfo:
        files.experiment_from_task(text, name="bad")
    assert any(message in p for p in problems_of(excinfo)), problems_of(excinfo)


def test_a_yaml_error_names_its_line():
    with pytest.raises(files.FileInvalid) as excinfo:
        files.experiment_from_task("name: x\nrun: echo\nresources:\n  cpus: [4\n", source="t.yaml")
    assert problems_of(excinfo)[0].startswith("t.yaml line 5: not valid YAML")


def test_autostop_becomes_skydecks_idle_policy():
    assert task("run: x\nresources: {autostop: false}", name="a").keep_cluster_up is True
    assert task("run: x\nresources: {autostop: 30}", name="a").autostop_minutes == 30
    assert task("run: x\nresources: {autostop: 2h}", name="a").autostop_minutes == 120
    slurm = task("run: x\nresources: {infra: slurm, autostop: {idle_minutes: 5, down: true}}", name="a")
    assert slurm.autostop_minutes == 5


def test_a_relative_workdir_may_be_replaced_by_the_workers_path():
    assert task("run: x\nworkdir: .", name="w", workdir="/srv/repo").workdir == "/srv/repo"


def test_names_come_from_the_task_the_file_or_the_caller():
    assert task("name: My_Task v2\nrun: x").name == "my-task-v2"
    assert task("run: x", source="uploads/Train.yaml").name == "train"
    with pytest.raises(files.FileInvalid) as excinfo:
        task("run: x", name="Not Valid")
    assert "name: 'Not Valid' is not a name SkyDeck takes" in problems_of(excinfo)[0]
    with pytest.raises(files.FileInvalid):
        task("name: new\nrun: x")  # a page's name


def test_the_model_and_the_flag_schemas_check_too():
    FlagSchemaFactory(path="lr", type="float")
    with pytest.raises(files.FileInvalid) as excinfo:
        task("run: x\nnum_nodes: 2", name="local-two", backend="local")
    assert "task.yaml line 2: num_nodes: The local backend runs on one node." in problems_of(excinfo)
    # A value the schema would write differently keeps the run line as it is: what runs does not change.
    e = task("run: python t.py lr=1", name="coerced")
    assert (e.command, e.flags) == ("python t.py lr=1", {})


@pytest.mark.parametrize(
    "run, expected",
    [
        ("python t.py lr=0.1", ("python t.py", {"lr": 0.1}, "plain")),
        ("python t.py --a=1 --b=x", ("python t.py", {"a": 1, "b": "x"}, "dashdash")),
        ("python t.py 'msg=hello world' x=true", ("python t.py", {"msg": "hello world", "x": True}, "plain")),
        ("python t.py b=1 a=2", ("python t.py b=1", {"a": 2}, "plain")),  # only what SkyDeck would write again
        ("python t.py lr=1e-3", ("python t.py", {"lr": "1e-3"}, "plain")),  # text, so it stays 1e-3
        ("python t.py --lr 0.1", ("python t.py --lr 0.1", {}, "plain")),
        ("A=1 B=2", ("A=1 B=2", {}, "plain")),
        ("echo a\npython t.py lr=1", ("echo a\npython t.py lr=1", {}, "plain")),
        ("python t.py 'unbalanced", ("python t.py 'unbalanced", {}, "plain")),
    ],
)
def test_split_flags_only_where_building_again_gives_the_same_line(run, expected):
    assert files.split_flags(run) == expected


# --- an experiment or a job -> a SkyPilot task YAML ---------------------------------------------------------


def test_an_experiment_exports_what_skydeck_launches():
    e = ExperimentFactory(
        name="slurmy",
        backend="skypilot",
        command="python t.py",
        flags={"x": 1},
        infra="slurm",
        cpus="2",
        autostop_minutes=3,
        envs={"A": 1},
    )
    text = files.experiment_task_yaml(e)
    assert text.startswith("# SkyPilot task of the SkyDeck experiment slurmy")
    assert "# Run it with: sky launch -c slurmy slurmy.yaml" in text
    assert yaml.safe_load(text) == {
        "name": "slurmy",
        "resources": {"infra": "slurm", "cpus": "2", "autostop": {"idle_minutes": 3, "down": True}},
        "envs": {"A": "1"},
        "run": "python t.py x=1",
    }
    e.keep_cluster_up, e.managed = True, False
    assert yaml.safe_load(files.experiment_task_yaml(e))["resources"]["autostop"] is False
    e.managed = True
    assert "autostop" not in yaml.safe_load(files.experiment_task_yaml(e))["resources"]
    assert "sky jobs launch -n slurmy" in files.experiment_task_yaml(e)


def test_a_job_exports_what_it_ran():
    e = ExperimentFactory(name="ran", backend="skypilot", command="python new.py", accelerators="H100:8", generation=3)
    job = JobFactory(
        experiment=e,
        attempt=2,
        generation=1,
        command="python old.py 'lr=0.1'",
        flags={"lr": 0.1},
        resources={"accelerators": "A100:1", "num_nodes": 1, "infra": "aws", "use_spot": True, "autostop_minutes": 10},
    )
    text = files.job_task_yaml(job)
    config = yaml.safe_load(text)
    assert config["name"] == "sd-ran-2" and config["run"] == "python old.py 'lr=0.1'"
    assert config["resources"] == {"infra": "aws", "accelerators": "A100:1", "use_spot": True, "autostop": 10}
    assert "the job ran generation 1" in text


# --- skydeck.yaml: reading -----------------------------------------------------------------------------------


def test_an_unknown_field_is_refused_with_its_line():
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file("experiments:\n  - name: a\n    command: echo\n    acceleratorz: H100:8\n", source="s.yaml")
    assert problems_of(excinfo) == [
        "s.yaml line 4: experiments[0].acceleratorz: unknown field: not a field of a SkyDeck experiment "
        "(did you mean 'accelerators'?)."
    ]


def test_every_problem_is_named_with_its_line_and_field():
    text = textwrap.dedent(
        """\
        version: 1
        experiments:
          - name: ok
            command: echo
            num_nodes: two
          - name: Bad_Name
            command: echo
          - name: ok
            command: echo
            flags: {"bad key": 1}
            desired_state: RUNNIN
        sweeps:
          - name: s
            base: ok
            kind: grid
            parameters: {lr: {min: 1, max: 2}}
        """
    )
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file(text)
    found = "\n".join(problems_of(excinfo))
    assert "skydeck.yaml line 5: experiments[0].num_nodes: Input should be a valid integer." in found
    assert "skydeck.yaml line 6: experiments[1].name: 'Bad_Name' is not a valid name." in found
    assert "skydeck.yaml line 11: experiments[2].desired_state: Input should be 'RUNNING'" in found
    assert "skydeck.yaml line 16: sweeps[0].parameters: lr: a grid takes a list of values" in found


def test_duplicates_and_versions_are_refused():
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file("experiments:\n  - {name: a, command: x}\n  - {name: a, command: y}\n")
    assert problems_of(excinfo) == ["skydeck.yaml line 3: experiments[1].name: 'a' is named twice in the file."]
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file("experiments: []\nexperiments: []\n")
    assert problems_of(excinfo) == ["skydeck.yaml line 2: experiments: 'experiments' is given twice."]
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file("version: 2\n")
    assert "this SkyDeck reads version 1" in problems_of(excinfo)[0]
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_file("run: echo\nresources: {}\n")
    assert "This looks like a SkyPilot task" in problems_of(excinfo)[0]


def test_an_alias_bomb_is_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)
    )
    with pytest.raises(files.FileInvalid) as excinfo:
        files.read_yaml(bomb, "bomb.yaml")
    assert "too large to read" in problems_of(excinfo)[0]


def test_a_task_may_be_inlined_or_a_file_next_to_it(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "train.yaml").write_text(
        "name: t\nworkdir: .\nresources: {accelerators: A100:1}\nrun: echo go\n"
    )
    plan = skydeck(
        """
        experiments:
          - task: tasks/train.yaml
            backend: skypilot
          - name: inline
            backend: skypilot
            accelerators: H100:8
            task:
              resources: {accelerators: A100:1, cpus: 4}
              run: echo inline
        """,
        base_dir=tmp_path,
    )
    t, inline = (row.todo["candidate"] for row in plan.rows)
    assert (t.name, t.accelerators, t.command, t.workdir) == ("t", "A100:1", "echo go", str(tmp_path))
    assert (inline.accelerators, inline.cpus) == ("H100:8", "4")  # the entry's fields win over the task's
    with pytest.raises(files.FileInvalid) as excinfo:
        skydeck("experiments:\n  - {name: x, task: tasks/train.yaml}\n")
    assert "a task file can be read only by manage.py apply" in problems_of(excinfo)[0]
    (tmp_path / "tasks" / "bad.yaml").write_text("run: x\nfile_mounts: {/d: s3://b}\n")
    with pytest.raises(files.FileInvalid) as excinfo:
        skydeck("experiments:\n  - {name: x, task: tasks/bad.yaml}\n", base_dir=tmp_path)
    assert problems_of(excinfo)[0].startswith("tasks/bad.yaml line 2: file_mounts: SkyDeck cannot pass file mounts")


# --- skydeck.yaml: plan and apply ------------------------------------------------------------------------------

FILE = """
experiments:
  - name: alpha
    command: python train.py
    flags: {lr: 0.1}
    backend: local
    desired_state: RUNNING
  - name: beta
    command: echo beta
    backend: local
"""


def test_create_then_nothing_the_second_time():
    plan, done = apply(FILE)
    assert [(r.name, r.action) for r in plan.rows] == [("alpha", "create"), ("beta", "create")]
    alpha = Experiment.objects.get(name="alpha")
    assert (alpha.desired_state, alpha.flags, alpha.owner) == ("RUNNING", {"lr": 0.1}, None)
    created = Event.objects.get(experiment=alpha, kind="created")
    assert (created.actor, created.data["file"], created.message) == (
        "file",
        "skydeck.yaml",
        "Created from skydeck.yaml (desired RUNNING)",
    )
    before = counts()
    plan, done = apply(FILE)
    assert plan.summary["unchanged"] == 2 and done == [] and counts() == before


def test_update_shows_the_fields_and_writes_the_same_events_as_the_pages():
    apply(FILE)
    alpha = Experiment.objects.get(name="alpha")
    plan, _ = apply(FILE.replace("lr: 0.1", "lr: 0.2").replace("echo beta", "echo beta2").replace("RUNNING", "STOPPED"))
    rows = {r.name: r for r in plan.rows}
    assert rows["alpha"].action == "update" and rows["alpha"].changes == [("flags", {"lr": 0.1}, {"lr": 0.2})]
    assert rows["alpha"].desired == ("RUNNING", "STOPPED")
    assert rows["beta"].changes == [("command", "echo beta", "echo beta2")]
    alpha.refresh_from_db()
    assert (alpha.flags, alpha.generation, alpha.desired_state) == ({"lr": 0.2}, 2, "STOPPED")
    spec = Event.objects.get(experiment=alpha, kind="spec")
    assert spec.message == "Spec edited (flags); generation 2" and spec.data["file"] == "skydeck.yaml"
    assert Event.objects.get(experiment=alpha, kind="desired_state").data == {
        "from": "RUNNING",
        "to": "STOPPED",
        "file": "skydeck.yaml",
    }
    text = "\n".join(files.format_plan(plan))
    assert (
        "~ update    experiment alpha\n"
        '        flags: {"lr": 0.1} → {"lr": 0.2}\n'
        "        desired state: RUNNING → STOPPED"
    ) in text


def test_a_field_left_out_is_its_default_and_desired_state_left_out_is_left_alone():
    apply(FILE.replace("    backend: local\n    desired_state: RUNNING", "    backend: local\n    accelerators: A1"))
    plan, _ = apply(FILE.replace("    desired_state: RUNNING\n", ""))
    alpha = next(r for r in plan.rows if r.name == "alpha")
    assert alpha.changes == [("accelerators", "A1", "")] and alpha.desired is None


def test_a_state_change_only():
    apply(FILE)
    plan, _ = apply(
        FILE.replace("echo beta\n    backend: local", "echo beta\n    backend: local\n    desired_state: TERMINATED")
    )
    assert [(r.name, r.action, r.desired) for r in plan.rows] == [
        ("alpha", "unchanged", None),
        ("beta", "state", ("STOPPED", "TERMINATED")),
    ]


def test_flags_are_compared_after_the_schemas_coerce_them():
    FlagSchemaFactory(path="lr", type="float", source="model")
    apply(FILE.replace("lr: 0.1", "lr: '0.1'"))
    assert Experiment.objects.get(name="alpha").flags == {"lr": 0.1}
    plan, _ = apply(FILE.replace("lr: 0.1", "lr: '0.1'"))
    assert plan.summary["unchanged"] == 2


def test_the_model_refuses_with_the_line_and_nothing_changes():
    apply(FILE)
    before = counts()
    with pytest.raises(files.FileInvalid) as excinfo:
        apply(FILE.replace("echo beta\n", "echo beta\n    num_nodes: 4\n").replace("lr: 0.1", "lr: 0.3"))
    assert problems_of(excinfo) == [
        "skydeck.yaml line 10: experiments[1].num_nodes: The local backend runs on one node."
    ]
    assert counts() == before and Experiment.objects.get(name="alpha").flags == {"lr": 0.1}


def test_prune_deletes_what_the_file_does_not_name_but_never_a_running_one():
    apply(FILE)
    ExperimentFactory(name="stray")
    busy = ExperimentFactory(name="busy")
    JobFactory(experiment=busy, attempt=1, status="RUNNING")
    assert "stray" not in [r.name for r in skydeck(FILE).rows]  # only with prune
    plan = skydeck(FILE, prune=True)
    rows = {r.name: r for r in plan.rows}
    assert rows["stray"].action == "delete"
    assert rows["busy"].action == "refused" and "attempt 1 is RUNNING" in rows["busy"].message
    before = counts()
    with pytest.raises(files.Refused):
        files.apply(plan, SYSTEM)
    assert counts() == before
    busy.jobs.update(status="CANCELLED")
    plan, done = apply(FILE, prune=True)
    assert sorted(r.name for r in done) == ["busy", "stray"]
    assert set(Experiment.objects.values_list("name", flat=True)) == {"alpha", "beta"}
    assert Event.objects.filter(kind="delete", data__file="skydeck.yaml").count() == 2


def test_an_empty_file_never_prunes():
    ExperimentFactory(name="keep")
    with pytest.raises(files.FileInvalid) as excinfo:
        skydeck("", prune=True)
    assert "pruning with it would delete every one" in problems_of(excinfo)[0]


def test_a_user_sees_what_they_may_not_change_as_refused(owner, other_user):
    ExperimentFactory(name="alpha", command="python train.py", flags={"lr": 0.1}, desired_state="RUNNING")
    ExperimentFactory(name="beta", command="echo beta")  # same as the file: unchanged, not refused
    mine = ExperimentFactory(name="mine", owner=other_user)
    other = intent.Actor(other_user, "api")
    plan = skydeck(FILE.replace("lr: 0.1", "lr: 0.5"), other, prune=True)
    rows = {r.name: r for r in plan.rows}
    assert rows["alpha"].action == "refused" and rows["alpha"].refusal == "permission"
    assert "its owner is owner" in rows["alpha"].message
    assert rows["beta"].action == "unchanged"
    assert rows["mine"].action == "delete"  # pruning only looks at what the user may change
    with pytest.raises(files.Refused):
        files.apply(plan, other)
    assert Experiment.objects.filter(pk=mine.pk).exists()
    # Staff may change everything.
    staff = intent.Actor(UserFactory(username="boss", is_staff=True), "api")
    assert skydeck(FILE.replace("lr: 0.1", "lr: 0.5"), staff).rows[0].action == "update"


def test_what_a_user_creates_is_theirs(other_user):
    apply(FILE, intent.Actor(other_user, "api"))
    assert Experiment.objects.get(name="alpha").owner == other_user
    assert Event.objects.filter(user=other_user, actor="api", data__file="skydeck.yaml").count() == 2


SWEEP_FILE = (
    FILE
    + """
sweeps:
  - name: lrs
    base: alpha
    kind: grid
    parameters: {lr: [0.01, 0.1]}
    max_concurrent: 1
    desired_state: STOPPED
"""
)


def test_a_sweep_is_made_once_and_then_its_state_follows_the_file():
    plan, _ = apply(SWEEP_FILE)
    row = plan.rows[-1]
    assert (row.kind, row.action) == ("sweep", "create")
    assert row.message == "from alpha: 2 experiments (alpha-lr0p01, alpha-lr0p1), desired STOPPED"
    sweep = Sweep.objects.get(name="lrs")
    assert sorted(sweep.experiments.values_list("name", flat=True)) == ["alpha-lr0p01", "alpha-lr0p1"]
    assert Event.objects.filter(kind="created", data__sweep="lrs", data__file="skydeck.yaml").count() == 2
    plan, done = apply(SWEEP_FILE)
    assert done == [] and plan.rows[-1].action == "unchanged"
    plan, done = apply(SWEEP_FILE.replace("desired_state: STOPPED", "desired_state: RUNNING"))
    assert (plan.rows[-1].action, plan.rows[-1].desired) == ("state", ("STOPPED", "RUNNING"))
    assert set(sweep.experiments.values_list("desired_state", flat=True)) == {"RUNNING"}
    # Pruning keeps a sweep's experiments when the file names the sweep.
    assert skydeck(SWEEP_FILE, prune=True).summary["delete"] == 0


def test_a_sweep_cannot_be_changed_once_made():
    apply(SWEEP_FILE)
    plan = skydeck(SWEEP_FILE.replace("[0.01, 0.1]", "[0.01, 0.1, 1.0]"))
    row = plan.rows[-1]
    assert row.action == "refused" and row.refusal == "conflict"
    assert row.changes == [("parameters", {"lr": [0.01, 0.1]}, {"lr": [0.01, 0.1, 1.0]})]


def test_a_sweep_needs_a_base_and_valid_children():
    with pytest.raises(files.FileInvalid) as excinfo:
        skydeck("sweeps:\n  - {name: s, base: nobody, parameters: {lr: [1]}}\n")
    assert problems_of(excinfo) == [
        "skydeck.yaml line 2: sweeps[0].base: no experiment named 'nobody' here or in the file."
    ]
    FlagSchemaFactory(path="lr", type="float", source="model")
    with pytest.raises(files.FileInvalid) as excinfo:
        skydeck(FILE + "sweeps:\n  - {name: s, base: alpha, parameters: {lr: [fast]}}\n")
    assert "sweeps[0].parameters: alpha-lrfast: Flag 'lr' must be a finite number" in problems_of(excinfo)[0]


def test_a_failure_while_applying_rolls_everything_back(other_user):
    plan = skydeck(FILE)
    ExperimentFactory(name="beta")  # made meanwhile: creating it now fails
    before = counts()
    with pytest.raises(files.ApplyFailed) as excinfo:
        files.apply(plan, SYSTEM)
    assert "An experiment named 'beta' already exists." in str(excinfo.value)
    assert counts() == before


def test_the_examples_skydeck_file_plans_cleanly():
    root = Path(__file__).resolve().parents[2]
    wanted = files.read_file((root / "examples" / "skydeck.yaml").read_text(), base_dir=root / "examples")
    plan = files.plan(wanted, SYSTEM)
    assert plan.summary["create"] == len(plan.rows) > 1 and not plan.refused


# --- export of the set --------------------------------------------------------------------------------------


def test_export_then_apply_changes_nothing_and_a_fresh_install_gets_the_same_file():
    apply(SWEEP_FILE)
    ExperimentFactory(
        name="gpu",
        backend="skypilot",
        command="python t.py",
        flags={"b": 1, "a": "x"},
        accelerators="H100:8",
        setup="pip install x\nmake\n",
        tags=["team-a"],
        disk_size=100,
        autostop_minutes=5,
    )
    text = files.export_file(Experiment.objects.all())
    data = yaml.safe_load(text)
    assert [e["name"] for e in data["experiments"]] == ["alpha", "beta", "gpu"]  # the sweep's children are its sweep
    assert data["sweeps"] == [
        {"name": "lrs", "base": "alpha", "kind": "grid", "parameters": {"lr": [0.01, 0.1]}, "max_concurrent": 1,
         "desired_state": "STOPPED"}
    ]  # fmt: skip
    assert data["experiments"][2] == {
        "name": "gpu",
        "command": "python t.py",
        "flags": {"a": "x", "b": 1},
        "backend": "skypilot",
        "accelerators": "H100:8",
        "disk_size": 100,
        "setup": "pip install x\nmake\n",
        "autostop_minutes": 5,
        "tags": ["team-a"],
        "desired_state": "STOPPED",
    }
    assert files.plan(files.read_file(text), SYSTEM).summary["unchanged"] == 4
    intent.delete(SYSTEM, Experiment.objects.all())
    Sweep.objects.all().delete()
    apply(text)
    assert files.export_file(Experiment.objects.all()) == text


def test_part_of_a_sweep_is_written_as_experiments():
    apply(SWEEP_FILE)
    data = files.export_data(Experiment.objects.filter(name__in=["alpha", "alpha-lr0p1"]))
    assert [e["name"] for e in data["experiments"]] == ["alpha", "alpha-lr0p1"] and "sweeps" not in data


# --- the plan of a bulk action ------------------------------------------------------------------------------------


def test_plan_desired_state_says_what_each_would_do(owner, other_user, django_assert_max_num_queries):
    ExperimentFactory(name="idle", desired_state="STOPPED", phase="STOPPED")
    running = ExperimentFactory(name="running", desired_state="RUNNING", phase="RUNNING", run_number=1)
    JobFactory(experiment=running, attempt=1, status="RUNNING")
    ExperimentFactory(name="done", desired_state="RUNNING", phase="SUCCEEDED", run_number=1, reconciled_run=1)
    ExperimentFactory(name="slurm", backend="skypilot", infra="slurm", desired_state="RUNNING", phase="RUNNING")
    ExperimentFactory(name="gone", desired_state="TERMINATED", phase="TERMINATED")
    ExperimentFactory(name="theirs", owner=other_user, desired_state="STOPPED")
    experiments = list(Experiment.objects.order_by("name"))
    actor = intent.Actor(owner, "user")

    def table(state):
        with django_assert_max_num_queries(3):
            return {
                r.experiment.name: (r.action, r.detail) for r in files.plan_desired_state(experiments, state, actor)
            }

    run = table("RUNNING")
    assert run["idle"] == ("launch", "starts the stopped cluster sd-idle and runs it (run 1)")
    assert run["gone"] == ("launch", "launches run 1")
    assert run["running"] == ("already", "already RUNNING")
    assert run["done"][0] == "already" and "run 1 finished (succeeded): Restart runs it again" in run["done"][1]
    assert run["theirs"][0] == "refused"
    stop = table("STOPPED")
    assert stop["running"] == ("stop", "Cancels attempt 1 (RUNNING), stops sd-running (its disk is kept)")
    assert stop["slurm"][1].startswith("Keeps the cluster up: slurm cannot stop one")
    assert stop["gone"] == ("stop", "Nothing to stop: its cluster is already torn down")
    assert stop["idle"][0] == "already"
    down = table("TERMINATED")
    assert down["idle"] == ("tear_down", "Tears down sd-idle (its disk is lost)")
    assert down["gone"][0] == "already"
    summary = files.summarize_state_plan(files.plan_desired_state(experiments, "TERMINATED", actor))
    assert summary == [("tear_down", "will be torn down", 4), ("already", "already so", 1), ("refused", "refused", 1)]
