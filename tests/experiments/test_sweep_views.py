"""Sweep pages: list, form, detail with children, start/stop/terminate all, re-run failed."""

import pytest

from experiments.models import Experiment, Sweep
from experiments.sweep_forms import format_parameters, parse_parameters
from tests.factories import ExperimentFactory


@pytest.fixture
def base(db):
    return ExperimentFactory(name="train", command="python train.py")


def test_sweep_pages_need_login(client, base):
    for url in ("/sweeps/", "/sweeps/new/"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_a_grid_sweep_from_the_form(owner_client, base):
    response = owner_client.post(
        "/sweeps/new/",
        {
            "name": "grid",
            "base": "train",
            "kind": "grid",
            "parameters": "nodes: 1, 2\nlayers: 2, 4, 8, 16",
            "max_concurrent": "3",
            "desired_state": "STOPPED",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    sweep = Sweep.objects.get(name="grid")
    assert response["Location"] == sweep.get_absolute_url()
    assert sweep.experiments.count() == 8 and sweep.max_concurrent == 3
    page = owner_client.get(sweep.get_absolute_url())
    assert page.status_code == 200
    assert b"train-layers16-nodes2" in page.content and b"Start all" in page.content
    listing = owner_client.get("/sweeps/")
    assert b"grid" in listing.content


def test_the_form_shows_errors_by_field(owner_client, base):
    response = owner_client.post(
        "/sweeps/new/", {"name": "Bad", "base": "nope", "kind": "grid", "parameters": "lr", "desired_state": "STOPPED"}
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert set(form.errors) >= {"name", "base", "parameters"}
    assert not Sweep.objects.exists()


def test_the_form_shows_schema_refusals(owner_client, base):
    from tests.factories import FlagSchemaFactory

    FlagSchemaFactory(path="layers", type="integer", source="model")
    response = owner_client.post(
        "/sweeps/new/",
        {"name": "s", "base": "train", "kind": "grid", "parameters": "layers: 2, deep", "desired_state": "STOPPED"},
    )
    assert response.status_code == 200
    assert "layers" in str(response.context["form"].non_field_errors())
    assert not Sweep.objects.exists()


def test_random_sweep_from_the_form(owner_client, base):
    response = owner_client.post(
        "/sweeps/new/",
        {
            "name": "rnd",
            "base": "train",
            "kind": "random",
            "samples": "5",
            "seed": "3",
            "parameters": "lr: 1e-5 .. 1e-2 log\nopt: adam, sgd",
            "desired_state": "STOPPED",
        },
    )
    assert response.status_code == 302
    assert Sweep.objects.get(name="rnd").experiments.count() == 5


def test_the_detail_page_refreshes_the_children_for_htmx(owner_client, base):
    owner_client.post(
        "/sweeps/new/",
        {"name": "g", "base": "train", "kind": "grid", "parameters": "lr: 1, 2", "desired_state": "STOPPED"},
    )
    response = owner_client.get("/sweeps/g/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="sweep-children"' in response.content and b"<html" not in response.content


def test_start_stop_terminate_all_and_rerun_failed(owner_client, base):
    owner_client.post(
        "/sweeps/new/",
        {"name": "g", "base": "train", "kind": "grid", "parameters": "lr: 1, 2", "desired_state": "STOPPED"},
    )
    assert owner_client.get("/sweeps/g/state/").status_code == 405
    owner_client.post("/sweeps/g/state/", {"state": "RUNNING"})
    assert set(Experiment.objects.filter(sweep__name="g").values_list("desired_state", flat=True)) == {"RUNNING"}
    owner_client.post("/sweeps/g/state/", {"state": "TERMINATED"})
    assert set(Experiment.objects.filter(sweep__name="g").values_list("desired_state", flat=True)) == {"TERMINATED"}
    response = owner_client.post("/sweeps/g/state/", {"state": "SIDEWAYS"})
    assert response.status_code == 302
    Experiment.objects.filter(name="train-lr1").update(phase="FAILED")
    owner_client.post("/sweeps/g/rerun-failed/")
    rerun = Experiment.objects.get(name="train-lr1")
    assert rerun.desired_state == "RUNNING" and rerun.run_number >= 1
    assert Experiment.objects.get(name="train-lr2").desired_state == "TERMINATED"
    assert owner_client.post("/sweeps/missing/state/", {"state": "RUNNING"}).status_code == 404


def test_parameters_text_round_trips():
    params = {
        "lr": [0.1, 0.01],
        "opt": ["adam", "a, b"],
        "amp": [True, False],
        "x": {"min": 1, "max": 9, "log": True, "type": "int"},
    }
    assert parse_parameters(format_parameters(params)) == params
    assert parse_parameters('{"lr": [1, 2]}') == {"lr": [1, 2]}


def _grid(client, name="g", parameters="lr: 1, 2"):
    return client.post(
        "/sweeps/new/",
        {"name": name, "base": "train", "kind": "grid", "parameters": parameters, "desired_state": "STOPPED"},
    )


def test_start_all_runs_finished_children_again(owner_client, base):
    _grid(owner_client)
    Experiment.objects.filter(sweep__name="g").update(
        desired_state="RUNNING", run_number=1, reconciled_run=1, phase="SUCCEEDED"
    )
    response = owner_client.post("/sweeps/g/state/", {"state": "RUNNING"}, follow=True)
    said = [str(m) for m in response.context["messages"]]
    assert said[-1:] == ["Started 2 finished experiments again (a new run each: train-lr1 run 2, train-lr2 run 2)."]
    assert set(Experiment.objects.filter(sweep__name="g").values_list("run_number", flat=True)) == {2}


def test_children_say_which_values_they_vary_instead_of_copying_the_description(owner_client, base):
    base.description = "The baseline: do not touch"
    base.save()
    _grid(owner_client, parameters="lr: 0.1, 0.01\nopt: adam")
    assert sorted(Experiment.objects.filter(sweep__name="g").values_list("description", flat=True)) == [
        'lr=0.01, opt="adam"',
        'lr=0.1, opt="adam"',
    ]


def test_samples_and_seed_are_shown_for_a_random_sweep_only(owner_client, base):
    def hidden(body, field):
        start = body.rindex("<div", 0, body.index(f'id="id_{field}"'))
        return " hidden>" in body[start : body.index(">", start) + 1]

    grid = owner_client.get("/sweeps/new/").content.decode()
    assert hidden(grid, "samples") and hidden(grid, "seed") and 'data-show-if="kind=random"' in grid
    random = owner_client.post("/sweeps/new/", {"name": "r", "kind": "random", "parameters": "lr"}).content.decode()
    assert not hidden(random, "samples") and not hidden(random, "seed")


def test_the_preview_counts_and_names_the_children_before_anything_is_created(owner_client, base):
    url = "/sweeps/preview/"
    body = owner_client.post(url, {"base": "train", "kind": "grid", "parameters": "lr: 1, 2\nlayers: 2, 4"})
    body = body.content.decode()
    assert "<strong>4 experiments</strong>" in body
    for name in ("train-layers2-lr1", "train-layers2-lr2", "train-layers4-lr1", "train-layers4-lr2"):
        assert f"<li>{name}</li>" in body
    assert not Sweep.objects.exists() and Experiment.objects.count() == 1
    many = owner_client.post(url, {"base": "train", "kind": "grid", "parameters": "a: 1, 2, 3, 4\nb: 1, 2, 3, 4"})
    assert "<strong>16 experiments</strong>" in many.content.decode() and "… and 4 more" in many.content.decode()
    seeded = {"base": "train", "kind": "random", "samples": "3", "seed": "7", "parameters": "lr: 0.1 .. 1"}
    assert owner_client.post(url, seeded).content == owner_client.post(url, seeded).content
    assert "<strong>3 experiments</strong>" in owner_client.post(url, seeded).content.decode()
    seedless = owner_client.post(url, {**seeded, "seed": ""}).content.decode()
    assert "give a seed to see the names" in seedless and "<li>" not in seedless
    bad = owner_client.post(url, {"base": "train", "kind": "grid", "parameters": "lr"}).content.decode()
    assert "Nothing to create yet: Parameters: Line 1" in bad
    empty = owner_client.post(url, {"kind": "grid"}).content.decode()
    assert "Pick a base experiment and give parameters" in empty
    assert owner_client.get(url).status_code == 405
