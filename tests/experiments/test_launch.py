import shlex
import subprocess

import pytest
from django.core.exceptions import ValidationError

from experiments.launch import build_command, flag_arguments, launch_spec
from tests.factories import ExperimentFactory

HOSTILE = [
    "$(touch /tmp/skydeck-pwned); rm -rf ~",
    "`id`",
    "a b  c",
    "'; echo injected; '",
    '"double" and \\backslash',
    "line1\nline2",
    "*",
    "--help",
    "",
    "ünïcødé ✓",
]


def test_flags_are_sorted_key_value_and_booleans_lowercase():
    assert build_command("python train.py", {"b": 2, "a": True, "c.d": 0.5, "e": False}) == (
        "python train.py a=true b=2 c.d=0.5 e=false"
    )


def test_dashdash_style():
    assert build_command("run", {"lr": 1e-3}, style="dashdash") == "run --lr=0.001"


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_the_program_literally(tmp_path, value):
    # Run the real command line through a real shell and read back argv.
    script = tmp_path / "argv.py"
    script.write_text("import sys, json; open('argv.json', 'w').write(json.dumps(sys.argv[1:]))")
    command = build_command(f"python3 {script}", {"x": value})
    subprocess.run(["/bin/bash", "-c", command], check=True, cwd=tmp_path)
    import json

    assert json.loads((tmp_path / "argv.json").read_text()) == [f"x={value}"]
    assert not (tmp_path / "skydeck-pwned").exists()


def test_hostile_value_creates_no_file(tmp_path):
    marker = tmp_path / "pwned"
    command = build_command("true", {"v": f"$(touch {marker})", "w": f"; touch {marker}"})
    subprocess.run(["/bin/bash", "-c", command], check=True)
    assert not marker.exists()


@pytest.mark.parametrize("key", ["", "1abc", "a b", "a;b", "$(x)", "a=b", "--lr", "a/b", "é"])
def test_invalid_keys_are_refused(key):
    with pytest.raises(ValidationError):
        flag_arguments({key: 1})


@pytest.mark.parametrize("value", [None, [1, 2], {"a": 1}, float("nan")])
def test_invalid_values_are_refused(value):
    with pytest.raises(ValidationError):
        flag_arguments({"k": value})


@pytest.mark.parametrize("key", ["lr", "_private", "trainer.optimizer.lr", "model-name", "A9_.-"])
def test_valid_keys(key):
    assert flag_arguments({key: 1}) == [shlex.quote(f"{key}=1")]


def test_empty_command_is_refused():
    with pytest.raises(ValidationError):
        build_command("   ", {})


@pytest.mark.django_db
def test_launch_spec_carries_resources_and_names():
    exp = ExperimentFactory(
        name="lr-sweep-3",
        command="python train.py",
        flags={"lr": 0.1},
        accelerators="H100:8",
        num_nodes=2,
        cpus="8+",
        memory="64",
        infra="aws/us-east-1",
        use_spot=True,
        disk_size=200,
        image_id="docker:img",
        setup="pip install -r req.txt",
        envs={"WANDB_MODE": "offline"},
        autostop_minutes=10,
    )
    spec = launch_spec(exp, 4)
    assert spec.job_name == "sd-lr-sweep-3-4"
    assert spec.cluster_name == "sd-lr-sweep-3"
    assert spec.command == "python train.py lr=0.1"
    assert spec.resources() | {} == {
        "accelerators": "H100:8",
        "num_nodes": 2,
        "cpus": "8+",
        "memory": "64",
        "infra": "aws/us-east-1",
        "use_spot": True,
        "disk_size": 200,
        "image_id": "docker:img",
        "autostop_minutes": 10,
        "managed": False,
    }
    assert spec.envs == {"WANDB_MODE": "offline"}
