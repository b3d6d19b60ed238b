"""Flag schemas: inference from pydantic models, learning, validation and typeahead."""

from typing import Optional

import pytest
from pydantic import BaseModel

from experiments.flags import import_model, infer_schema, learn_flags
from experiments.models import FlagSchema
from tests.factories import ExperimentFactory, FlagSchemaFactory
from tests.support import Config

validate_against_schema = FlagSchema.objects.check_flags
unknown_paths = FlagSchema.objects.unknown
search_paths = FlagSchema.objects.search


def by_path(specs):
    return {s.path: s for s in specs}


def test_infer_schema_flattens_nested_models_to_dotted_paths():
    specs = by_path(infer_schema(Config))
    assert set(specs) == {
        "trainer.optimizer.lr",
        "trainer.optimizer.kind",
        "trainer.optimizer.momentum",
        "trainer.epochs",
        "trainer.amp",
        "trainer.color",
        "trainer.level",
        "trainer.tag",
        "name",
        "shape",
        "mixed",
        "maybe_model.lr",
        "maybe_model.kind",
        "maybe_model.momentum",
    }


def test_infer_schema_types_defaults_descriptions_and_required():
    specs = by_path(infer_schema(Config))
    lr = specs["trainer.optimizer.lr"]
    assert (lr.type, lr.default, lr.description, lr.required) == ("float", 0.001, "learning rate", False)
    assert specs["trainer.epochs"].type == "integer" and specs["trainer.epochs"].required is True
    assert specs["trainer.amp"].type == "boolean" and specs["trainer.amp"].default is True
    assert specs["name"].type == "string" and specs["name"].description == "run name" and specs["name"].default == "run"


def test_infer_schema_enums_and_literals_become_choices():
    specs = by_path(infer_schema(Config))
    assert specs["trainer.optimizer.kind"].type == "choice"
    assert specs["trainer.optimizer.kind"].choices == ["adam", "sgd"]
    assert specs["trainer.color"].choices == ["red", "blue"] and specs["trainer.color"].default == "blue"
    assert specs["trainer.level"].choices == [1, 2] and specs["trainer.level"].default == 1


def test_infer_schema_unwraps_optionals():
    specs = by_path(infer_schema(Config))
    momentum = specs["trainer.optimizer.momentum"]
    assert momentum.type == "float" and momentum.default is None and momentum.required is False
    assert "Optional" in momentum.type_name or "None" in momentum.type_name
    assert specs["trainer.tag"].type == "string"


def test_infer_schema_keeps_other_types_as_strings_with_their_name():
    specs = by_path(infer_schema(Config))
    assert specs["shape"].type == "string" and specs["shape"].type_name == "list[int]"
    assert specs["shape"].default == [1, 2]
    assert specs["mixed"].type == "string" and "int" in specs["mixed"].type_name and "str" in specs["mixed"].type_name


def test_infer_schema_survives_a_recursive_model():
    class Node(BaseModel):
        value: int = 0
        child: Optional["Node"] = None

    Node.model_rebuild()
    paths = [s.path for s in infer_schema(Node)]
    assert paths[0] == "value" and len(paths) < 50


def test_infer_schema_refuses_what_is_not_a_model():
    with pytest.raises(TypeError):
        infer_schema(dict)


def test_import_model_replaces_the_namespace(db):
    FlagSchemaFactory(namespace="cfg", path="old.flag")
    FlagSchemaFactory(namespace="other", path="keep.me")
    learnt = FlagSchemaFactory(namespace="learnt", path="trainer.epochs", source="learnt", type="integer")
    import_model(Config, "cfg")
    assert not FlagSchema.objects.filter(path="old.flag").exists()
    assert FlagSchema.objects.filter(path="keep.me").exists()
    assert FlagSchema.objects.filter(namespace="cfg").count() == 14
    assert set(FlagSchema.objects.filter(namespace="cfg").values_list("source", flat=True)) == {"model"}
    # The learnt guess gives way to the model's description of the flag.
    assert not FlagSchema.objects.filter(pk=learnt.pk).exists()
    row = FlagSchema.objects.get(namespace="cfg", path="trainer.optimizer.kind")
    assert row.type == "choice" and row.choices == ["adam", "sgd"] and row.default == "adam"


# --- validation ------------------------------------------------------------------------


@pytest.fixture
def schema(db):
    import_model(Config, "cfg")


def test_validation_coerces_values_to_their_types(schema):
    coerced, errors, unknown = validate_against_schema(
        {
            "trainer.optimizer.lr": "0.01",
            "trainer.epochs": "5",
            "trainer.amp": "false",
            "trainer.level": "2",
            "trainer.optimizer.kind": "sgd",
            "name": 7,
        }
    )
    assert errors == {} and unknown == []
    assert coerced == {
        "trainer.optimizer.lr": 0.01,
        "trainer.epochs": 5,
        "trainer.amp": False,
        "trainer.level": 2,
        "trainer.optimizer.kind": "sgd",
        "name": "7",
    }


@pytest.mark.parametrize(
    ("flags", "path", "words"),
    [
        ({"trainer.epochs": "many"}, "trainer.epochs", "integer"),
        ({"trainer.epochs": 2.5}, "trainer.epochs", "integer"),
        ({"trainer.epochs": True}, "trainer.epochs", "integer"),
        ({"trainer.optimizer.lr": "fast"}, "trainer.optimizer.lr", "number"),
        ({"trainer.amp": "maybe"}, "trainer.amp", "true or false"),
        ({"trainer.optimizer.kind": "rmsprop"}, "trainer.optimizer.kind", '"adam", "sgd"'),
        ({"trainer.color": "green"}, "trainer.color", '"red", "blue"'),
    ],
)
def test_validation_refuses_a_value_that_does_not_fit_naming_the_flag(schema, flags, path, words):
    coerced, errors, unknown = validate_against_schema(flags)
    assert set(errors) == {path}
    assert path in errors[path] and words in errors[path]


def test_unknown_flags_are_allowed_and_listed(schema):
    coerced, errors, unknown = validate_against_schema({"trainer.epochs": 3, "mystery": "x", "zeta": 1})
    assert errors == {} and unknown == ["mystery", "zeta"] and coerced["mystery"] == "x"
    assert unknown_paths({"trainer.epochs": 3, "mystery": "x"}) == ["mystery"]


def test_validation_refuses_bad_names_and_values(db):
    coerced, errors, unknown = validate_against_schema({"bad key": 1, "nul": "a\x00b", "inf": float("inf"), "n": None})
    assert set(errors) == {"bad key", "nul", "inf", "n"}


def test_learnt_rows_never_refuse_a_value(db):
    learn_flags({"epochs": 3})
    coerced, errors, unknown = validate_against_schema({"epochs": "lots"})
    assert errors == {} and unknown == [] and coerced == {"epochs": "lots"}


def test_a_hand_entered_row_wins_over_a_model_row(db):
    FlagSchemaFactory(namespace="a", path="x", type="integer", source="model")
    FlagSchemaFactory(namespace="b", path="x", type="string", source="manual")
    coerced, errors, unknown = validate_against_schema({"x": "abc"})
    assert errors == {} and coerced == {"x": "abc"}


# --- learning ------------------------------------------------------------------------------


def test_flags_used_by_experiments_are_learnt(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        ExperimentFactory(flags={"lr": 0.1, "epochs": 3, "amp": True, "name": "x"})
    rows = {r.path: r for r in FlagSchema.objects.filter(source="learnt")}
    assert {p: r.type for p, r in rows.items()} == {
        "lr": "float",
        "epochs": "integer",
        "amp": "boolean",
        "name": "string",
    }
    assert rows["epochs"].default == 3


def test_learning_widens_types_and_skips_known_flags(db):
    FlagSchemaFactory(namespace="cfg", path="known", type="integer", source="model")
    learn_flags({"n": 1, "known": "x"})
    learn_flags({"n": 0.5})
    assert FlagSchema.objects.get(path="n").type == "float"
    learn_flags({"n": "abc"})
    assert FlagSchema.objects.get(path="n").type == "string"
    assert FlagSchema.objects.filter(path="known").count() == 1


# --- typeahead ---------------------------------------------------------------------------------


def test_search_paths_prefers_prefix_matches_and_one_row_per_path(db):
    FlagSchemaFactory(namespace="a", path="trainer.optimizer.lr", type="float", source="model")
    FlagSchemaFactory(namespace="learnt", path="trainer.optimizer.lr", type="string", source="learnt")
    FlagSchemaFactory(namespace="a", path="lr_schedule", source="model")
    FlagSchemaFactory(namespace="a", path="model.layers", source="model", description="number of layers")
    rows = search_paths("lr", limit=10)
    assert [r.path for r in rows] == ["lr_schedule", "trainer.optimizer.lr"]
    assert rows[1].source == "model"
    assert [r.path for r in search_paths("layers")] == ["model.layers"]
    assert len(search_paths("", limit=2)) == 2
