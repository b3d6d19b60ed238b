"""manage.py import_flags: a model from the user's own package becomes flag schemas."""

import textwrap

import pytest
from django.core.management import CommandError, call_command

from experiments.models import FlagSchema
from tests.factories import FlagSchemaFactory

USER_CODE = textwrap.dedent(
    """
    from enum import Enum
    from typing import Literal, Optional
    from pydantic import BaseModel, Field

    class Act(str, Enum):
        RELU = "relu"
        GELU = "gelu"

    class Optim(BaseModel):
        lr: float = Field(0.001, description="learning rate")
        kind: Literal["adam", "sgd"] = "adam"

    class TrainConfig(BaseModel):
        optimizer: Optim = Optim()
        layers: int
        act: Act = Act.GELU
        clip: Optional[float] = None
    """
)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mylab.config"
    import sys

    for name in ("mylab", "mylab.config"):
        sys.modules.pop(name, None)


def test_import_flags_stores_the_models_fields(db, user_package, capsys):
    call_command("import_flags", f"{user_package}:TrainConfig")
    rows = {r.path: r for r in FlagSchema.objects.filter(namespace="TrainConfig")}
    assert set(rows) == {"optimizer.lr", "optimizer.kind", "layers", "act", "clip"}
    assert rows["optimizer.lr"].type == "float" and rows["optimizer.lr"].default == 0.001
    assert rows["optimizer.lr"].description == "learning rate"
    assert rows["optimizer.kind"].choices == ["adam", "sgd"]
    assert rows["act"].choices == ["relu", "gelu"] and rows["act"].default == "gelu"
    assert rows["layers"].required and rows["layers"].type == "integer"
    assert rows["clip"].type == "float" and not rows["clip"].required
    assert all(r.source == "model" for r in rows.values())
    assert "Imported 5 flags" in capsys.readouterr().out


def test_import_flags_replaces_the_namespace(db, user_package):
    FlagSchemaFactory(namespace="lab", path="gone.flag")
    FlagSchemaFactory(namespace="elsewhere", path="stays")
    call_command("import_flags", f"{user_package}:TrainConfig", "--namespace", "lab")
    assert set(FlagSchema.objects.filter(namespace="lab").values_list("path", flat=True)) == {
        "optimizer.lr",
        "optimizer.kind",
        "layers",
        "act",
        "clip",
    }
    assert FlagSchema.objects.filter(path="stays").exists()
    call_command("import_flags", f"{user_package}:TrainConfig", "--namespace", "lab")
    assert FlagSchema.objects.filter(namespace="lab").count() == 5


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_here:Model", "Cannot import"),
        ("mylab.config:Missing", "no attribute"),
        ("mylab.config:Enum", "not a pydantic model"),
        ("justaword", "module.path:ModelClass"),
    ],
)
def test_import_flags_explains_what_went_wrong(db, user_package, target, message):
    with pytest.raises(CommandError, match=message):
        call_command("import_flags", target)
    assert not FlagSchema.objects.exists()


def test_import_flags_learn_backfills_used_flags(db):
    from tests.factories import ExperimentFactory

    ExperimentFactory(flags={"epochs": 3})
    FlagSchema.objects.all().delete()
    call_command("import_flags", "--learn")
    assert FlagSchema.objects.get(path="epochs").type == "integer"
