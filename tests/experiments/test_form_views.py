"""Create, edit and clone: the flag editor, typed values, schema errors, the command preview."""

import pytest
from django.urls import reverse

from experiments.models import Event, Experiment
from tests.factories import ExperimentFactory, FlagSchemaFactory, JobFactory
from tests.support import form_data

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


def test_create_with_typed_flags(owner_client, owner):
    response = owner_client.post(reverse("experiments:create"), form_data(envs="A=1\nB=two"))
    experiment = Experiment.objects.get(name="new-exp")
    assert response["Location"] == experiment.get_absolute_url()
    assert experiment.flags == {"trainer.lr": 0.001, "trainer.amp": True, "trainer.epochs": 10}
    assert experiment.tags == ["a", "b"]
    assert experiment.envs == {"A": "1", "B": "two"}
    assert experiment.created_by == owner
    assert experiment.events.get().kind == Event.Kind.CREATED


def test_unchecked_boolean_flag_is_false(owner_client):
    owner_client.post(reverse("experiments:create"), form_data(**{"flag-r2-value": None}))
    assert Experiment.objects.get(name="new-exp").flags["trainer.amp"] is False


def test_create_running_starts_the_first_run(owner_client):
    owner_client.post(reverse("experiments:create"), form_data(desired_state="RUNNING"))
    experiment = Experiment.objects.get(name="new-exp")
    assert experiment.desired_state == "RUNNING" and experiment.run_number == 1
    [created] = experiment.events.all()
    assert created.kind == "created" and created.data["desired_state"] == "RUNNING" and created.user.username == "owner"


@pytest.mark.parametrize(
    "overrides,field_error",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "new"}, "name"),
        ({"command": ""}, "command"),
        ({"backend": "skypilot", "num_nodes": "two"}, "num_nodes"),
        ({"tags": "ok, no!"}, "tags"),
        ({"envs": "not an assignment"}, "envs"),
        ({"backend": "nowhere"}, "backend"),
    ],
)
def test_bad_input_shows_errors_and_saves_nothing(owner_client, overrides, field_error):
    response = owner_client.post(reverse("experiments:create"), form_data(**overrides))
    assert response.status_code == 200
    assert field_error in response.context["form"].errors
    assert 'aria-invalid="true"' in response.content.decode()
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"flag-r3-value": "ten"}, "trainer.epochs must be an integer."),
        ({"flag-r1-value": "fast"}, "trainer.lr must be a finite number."),
        ({"flag-r1-key": "bad key;rm"}, "is not valid"),
        ({"flag-r3-key": "trainer.lr"}, "trainer.lr is set twice."),
        ({"flag-r3-key": ""}, "Give this flag a name."),
    ],
)
def test_bad_flags_are_marked_on_their_row(owner_client, overrides, message):
    response = owner_client.post(reverse("experiments:create"), form_data(**overrides))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'Not saved: fix <a href="#flag-' in body and "1 flag</a>, marked below." in body
    assert message.replace("'", "&#x27;") in body
    assert 'class="flag-row has-error"' in body
    assert not Experiment.objects.exists()
    # what the user typed is kept
    assert 'value="python train.py"' in body or "python train.py" in body


def test_schema_errors_show_per_flag_row(owner_client):
    from tests.factories import FlagSchemaFactory

    FlagSchemaFactory(namespace="train", path="trainer.epochs", type="integer", source="model")
    response = owner_client.post(
        reverse("experiments:create"), form_data(**{"flag-r3-type": "string", "flag-r3-value": "ten"})
    )
    body = response.content.decode()
    error = body.split('id="flag-r3-error"', 1)[1].split("</", 1)[0]
    assert "trainer.epochs" in error and "integer" in error, error
    assert not Experiment.objects.exists()


def test_choice_schema_is_a_select_and_checks_the_value(owner_client):
    FlagSchemaFactory(path="trainer.optim", type="choice", choices=["adam", "sgd"])
    response = owner_client.post(
        reverse("experiments:create"),
        form_data(**{"flag-r4-key": "trainer.optim", "flag-r4-type": "choice", "flag-r4-value": "rmsprop"}),
    )
    assert "trainer.optim must be one of &quot;adam&quot;, &quot;sgd&quot;." in response.content.decode()
    owner_client.post(
        reverse("experiments:create"),
        form_data(**{"flag-r4-key": "trainer.optim", "flag-r4-type": "choice", "flag-r4-value": "sgd"}),
    )
    assert Experiment.objects.get().flags["trainer.optim"] == "sgd"


def test_flag_row_fits_the_schema(owner_client):
    FlagSchemaFactory(path="trainer.amp", type="boolean", default=True, description="mixed precision")
    FlagSchemaFactory(path="trainer.optim", type="choice", choices=["adam", "sgd"])
    body = owner_client.get(
        reverse("experiments:flag_row") + "?uid=u1&flag-u1-key=trainer.amp&flag-u1-type=string", headers=HX
    ).content.decode()
    assert 'type="checkbox" name="flag-u1-value" id="flag-u1-value" value="true" checked' in body
    assert "mixed precision" in body
    body = owner_client.get(
        reverse("experiments:flag_row") + "?uid=u2&flag-u2-key=trainer.optim", headers=HX
    ).content.decode()
    assert '<select name="flag-u2-value"' in body and ">sgd<" in body
    body = owner_client.get(reverse("experiments:flag_row") + "?uid=u3&flag-u3-key=my.own", headers=HX).content.decode()
    assert "Not a known flag" in body
    new = owner_client.get(reverse("experiments:flag_row"), headers=HX).content.decode()
    assert 'class="flag-row"' in new


def test_flag_typeahead_searches_known_paths(owner_client):
    FlagSchemaFactory(path="trainer.lr", type="float")
    FlagSchemaFactory(path="model.depth", type="integer")
    body = owner_client.get(reverse("experiments:flag_search") + "?flag-x-key=train", headers=HX).content.decode()
    assert 'value="trainer.lr"' in body and "model.depth" not in body


def test_command_preview_is_the_exact_line(owner_client):
    response = owner_client.post(
        reverse("experiments:preview"), form_data(**{"flag-r4-key": "note", "flag-r4-value": "a b; rm"}), headers=HX
    )
    assert (
        "python train.py &#x27;note=a b; rm&#x27; trainer.amp=true trainer.epochs=10 trainer.lr=0.001"
        in response.content.decode()
    )
    response = owner_client.post(reverse("experiments:preview"), form_data(flag_style="dashdash"), headers=HX)
    assert "--trainer.amp=true" in response.content.decode()
    response = owner_client.post(reverse("experiments:preview"), form_data(**{"flag-r3-value": "x"}), headers=HX)
    assert "The command line appears when the flags are right: trainer.epochs" in response.content.decode()


def test_edit_bumps_generation_and_records_a_spec_event(owner_client):
    experiment = ExperimentFactory(name="edited", command="python a.py", flags={"lr": 0.1})
    page = owner_client.get(reverse("experiments:edit", args=["edited"])).content.decode()
    assert 'value="lr"' in page and "disabled" in page
    data = form_data(name="ignored", command="python b.py", **{"flag-r1-key": "lr", "flag-r1-value": "0.2"})
    response = owner_client.post(reverse("experiments:edit", args=["edited"]), data, follow=True)
    experiment.refresh_from_db()
    assert experiment.name == "edited"
    assert experiment.command == "python b.py" and experiment.flags["lr"] == 0.2
    assert experiment.generation == 2
    event = experiment.events.get(kind=Event.Kind.SPEC)
    assert "command" in event.data["fields"] and "flags" in event.data["fields"]
    assert any("Saved edited" in str(m) for m in response.context["messages"])


def test_edit_of_a_running_experiment_says_it_applies_on_restart(owner_client):
    experiment = ExperimentFactory(name="live", desired_state="RUNNING", flags={})
    JobFactory(experiment=experiment, attempt=1, status="RUNNING", generation=1)
    page = owner_client.get(reverse("experiments:edit", args=["live"])).content.decode()
    assert "applies when the experiment restarts" in page and "restart_now" in page
    data = form_data(desired_state="RUNNING", command="python c.py")
    response = owner_client.post(reverse("experiments:edit", args=["live"]), data, follow=True)
    assert any("keeps running the previous spec" in str(m) for m in response.context["messages"])
    assert "Restart to apply" in response.content.decode()
    experiment.refresh_from_db()
    assert experiment.run_number == 0
    owner_client.post(
        reverse("experiments:edit", args=["live"]),
        form_data(desired_state="RUNNING", command="python d.py", restart_now="on"),
    )
    experiment.refresh_from_db()
    assert experiment.run_number == 1
    assert experiment.events.filter(kind=Event.Kind.RESTART).exists()


def test_edit_desired_state_goes_through_set_desired_state(owner_client):
    experiment = ExperimentFactory(name="st", flags={})
    owner_client.post(
        reverse("experiments:edit", args=["st"]),
        form_data(
            desired_state="RUNNING",
            command="echo hello",
            **{
                "flag-r1-key": None,
                "flag-r1-type": None,
                "flag-r1-value": None,
                "flag-r2-key": None,
                "flag-r2-type": None,
                "flag-r2-value": None,
                "flag-r3-key": None,
                "flag-r3-type": None,
                "flag-r3-value": None,
            },
        ),
    )
    experiment.refresh_from_db()
    assert experiment.desired_state == "RUNNING"
    assert experiment.events.filter(kind=Event.Kind.DESIRED_STATE).count() == 1
    assert not experiment.events.filter(kind=Event.Kind.SPEC).exists()


def test_bad_edit_saves_nothing(owner_client):
    experiment = ExperimentFactory(name="keep", command="python a.py")
    response = owner_client.post(
        reverse("experiments:edit", args=["keep"]), form_data(command="", **{"flag-r3-value": "x"})
    )
    assert response.status_code == 200
    experiment.refresh_from_db()
    assert experiment.command == "python a.py" and experiment.generation == 1


def test_clone_prefills_the_form(owner_client):
    ExperimentFactory(name="src", command="python s.py", flags={"seed": 1, "amp": True}, tags=["x"])
    body = owner_client.get(reverse("experiments:clone", args=["src"])).content.decode()
    assert 'value="src-copy"' in body
    assert 'value="seed"' in body and 'value="amp"' in body
    assert f'action="{reverse("experiments:create")}"' in body
    assert "python s.py amp=true seed=1" in body


# --- the form says what applies and what is wrong ----------------------------------------------


def _hidden(body, marker):
    """Whether the form part holding ``marker`` is rendered hidden."""
    at = body.index(marker)
    start = body.rindex("<div", 0, at)
    return " hidden>" in body[start : body.index(">", start) + 1]


def test_skypilot_only_fields_are_hidden_for_the_local_backend(owner_client):
    body = owner_client.get(reverse("experiments:create")).content.decode()  # local is the default
    for field in ("id_accelerators", "id_infra", "id_disk_size", "id_image_id", "id_autostop_minutes", "id_use_spot"):
        assert _hidden(body, f'id="{field}"'), field
    assert 'data-show-if="backend=skypilot"' in body
    assert "runs the command as a process on this machine" in body
    response = owner_client.post(reverse("experiments:create"), form_data(backend="skypilot", name=None))
    body = response.content.decode()
    for field in ("id_accelerators", "id_infra", "id_managed"):
        assert not _hidden(body, f'id="{field}"'), field


def test_hidden_skypilot_fields_never_stop_a_local_experiment_from_saving(owner_client):
    response = owner_client.post(reverse("experiments:create"), form_data(managed="on", num_nodes="4"))
    assert response.status_code == 302
    experiment = Experiment.objects.get(name="new-exp")
    assert experiment.backend == "local" and not experiment.managed and experiment.num_nodes == 1


def test_max_restarts_is_shown_only_for_a_policy_that_restarts(owner_client):
    never = owner_client.post(reverse("experiments:create"), form_data(name=None)).content.decode()
    assert _hidden(never, 'id="id_max_restarts"')
    again = owner_client.post(reverse("experiments:create"), form_data(name=None, restart_policy="on_failure"))
    assert not _hidden(again.content.decode(), 'id="id_max_restarts"')


def test_inputs_come_before_their_help_so_they_line_up(owner_client):
    body = owner_client.get(reverse("experiments:create")).content.decode()
    group = body[body.index('<label for="id_autostop_minutes"') :]
    assert group.index('id="id_autostop_minutes"') < group.index('id="id_autostop_minutes_helptext"')


def test_the_banner_names_every_problem_not_only_the_flags(owner_client):
    response = owner_client.post(
        reverse("experiments:create"), form_data(name="", command="", **{"flag-r3-value": "ten"})
    )
    body = response.content.decode()
    assert (
        'Not saved: fix <a href="#id_name">name</a>, <a href="#id_command">command</a> and '
        '<a href="#flag-r3-key">1 flag</a>, marked below.'
    ) in body
    assert "Some flags are not valid" not in body


@pytest.mark.parametrize("name,suggestion", [("MyExp", "myexp"), ("my exp", "my-exp"), ("-x-", "x")])
def test_a_bad_name_is_refused_in_the_words_of_the_help(owner_client, name, suggestion):
    response = owner_client.post(reverse("experiments:create"), form_data(name=name))
    errors = response.context["form"].errors["name"]
    assert errors == [
        "Use lowercase letters, digits and hyphens, starting and ending with a letter or digit (at most 60)."
        f" For example: {suggestion}"
    ]
    assert "slug" not in response.content.decode()


def test_a_row_with_a_bad_key_and_a_bad_value_is_told_of_both(owner_client):
    response = owner_client.post(
        reverse("experiments:create"),
        form_data(**{"flag-r3-key": "1epochs", "flag-r3-type": "integer", "flag-r3-value": "ten"}),
    )
    body = response.content.decode()
    error = body.split('id="flag-r3-error"', 1)[1].split("</p>", 1)[0]
    assert "&#x27;1epochs&#x27; is not valid" in error and "must be an integer" in error, error
    row = body[body.index('id="flag-r3"') :]
    row = row[: row.index('id="flag-r', 10) if 'id="flag-r' in row[10:] else len(row)]
    assert "Not a known flag" not in row


def test_the_preview_says_what_is_wrong_with_the_flags(owner_client):
    response = owner_client.post(reverse("experiments:preview"), form_data(**{"flag-r3-value": "ten"}))
    body = response.content.decode()
    assert "marked in red" not in body
    assert "The command line appears when the flags are right: trainer.epochs must be an integer." in body
