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
    response = owner_client.post("/sweeps/new/", {
        "name": "grid", "base": "train", "kind": "grid", "parameters": "nodes: 1, 2\nlayers: 2, 4, 8, 16",
        "max_concurrent": "3", "desired_state": "STOPPED",
    })
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
    response = owner_client.post("/sweeps/new/", {"name": "Bad", "base": "nope", "kind": "grid", "parameters": "lr",
                                                   "desired_state": "STOPPED"})
    assert response.status_code == 200
    form = response.context["form"]
    assert set(form.errors) >= {"name", "base", "parameters"}
    assert not Sweep.objects.exists()


def test_the_form_shows_schema_refusals(owner_client, base):
    from tests.factories import FlagSchemaFactory

    FlagSchemaFactory(path="layers", type="integer", source="model")
    response = owner_client.post("/sweeps/new/", {"name": "s", "base": "train", "kind": "grid",
                                                   "parameters": "layers: 2, deep", "desired_state": "STOPPED"})
    assert response.status_code == 200
    assert "layers" in str(response.context["form"].non_field_errors())
    assert not Sweep.objects.exists()


def test_random_sweep_from_the_form(owner_client, base):
    response = owner_client.post("/sweeps/new/", {"name": "rnd", "base": "train", "kind": "random", "samples": "5", "seed": "3",
                                                   "parameters": "lr: 1e-5 .. 1e-2 log\nopt: adam, sgd", "desired_state": "STOPPED"})
    assert response.status_code == 302
    assert Sweep.objects.get(name="rnd").experiments.count() == 5


def test_the_detail_page_refreshes_the_children_for_htmx(owner_client, base):
    owner_client.post("/sweeps/new/", {"name": "g", "base": "train", "kind": "grid", "parameters": "lr: 1, 2", "desired_state": "STOPPED"})
    response = owner_client.get("/sweeps/g/", headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert b'id="sweep-children"' in response.content and b"<html" not in response.content


def test_start_stop_terminate_all_and_rerun_failed(owner_client, base):
    owner_client.post("/sweeps/new/", {"name": "g", "base": "train", "kind": "grid", "parameters": "lr: 1, 2", "desired_state": "STOPPED"})
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
    params = {"lr": [0.1, 0.01], "opt": ["adam", "a, b"], "amp": [True, False], "x": {"min": 1, "max": 9, "log": True, "type": "int"}}
    assert parse_parameters(format_parameters(params)) == params
    assert parse_parameters('{"lr": [1, 2]}') == {"lr": [1, 2]}
