"""Guardrails on the pages: the form's fields, spend against budget, the status card, orphans, notifications."""

import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments import logs
from experiments.models import Event, Experiment, Sweep
from tests.factories import ExperimentFactory, JobFactory, SweepFactory, UserFactory
from tests.support import form_data

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


def guardrail_data(**overrides):
    return form_data(
        **{
            "max_cost": "10",
            "max_runtime_minutes": "120",
            "limit_action": "TERMINATED",
            "stall_minutes": "15",
            "stall_action": "flag",
            **overrides,
        }
    )


# --- the experiment form ---------------------------------------------------------------------


def test_the_form_has_a_guardrails_fieldset(owner_client, settings):
    settings.SKYDECK_STALL_MINUTES = 0
    body = owner_client.get(reverse("experiments:create")).content.decode()
    assert "<legend>Guardrails</legend>" in body
    for name in ("max_cost", "max_runtime_minutes", "limit_action", "stall_minutes", "stall_action"):
        assert f'name="{name}"' in body
    assert "Budget ($)" in body and "Runtime limit (minutes)" in body and "Stall watchdog (minutes)" in body
    assert "Empty or 0: off." in body
    settings.SKYDECK_STALL_MINUTES = 30
    assert "default, 30 minutes; 0: off." in owner_client.get(reverse("experiments:create")).content.decode()


def test_create_with_guardrails(owner_client):
    response = owner_client.post(reverse("experiments:create"), guardrail_data())
    assert response.status_code == 302, response.content.decode()[:2000]
    e = Experiment.objects.get(name="new-exp")
    assert (e.max_cost, e.max_runtime_minutes, e.limit_action, e.stall_minutes, e.stall_action) == (
        10.0,
        120,
        "TERMINATED",
        15,
        "flag",
    )


def test_a_form_without_the_guardrail_fields_keeps_the_defaults(owner_client):
    assert owner_client.post(reverse("experiments:create"), form_data()).status_code == 302
    e = Experiment.objects.get(name="new-exp")
    assert (e.max_cost, e.max_runtime_minutes, e.limit_action, e.stall_minutes, e.stall_action) == (
        None,
        None,
        "STOPPED",
        None,
        "restart",
    )


def test_edit_sets_and_clears_guardrails_through_intent(owner_client, owner):
    assert owner_client.post(reverse("experiments:create"), form_data(name="train")).status_code == 302
    e = Experiment.objects.get(name="train")
    JobFactory(experiment=e, attempt=1, cost=3.2)
    url = reverse("experiments:edit", args=["train"])
    assert "Spent so far: $3.20." in owner_client.get(url).content.decode()
    data = guardrail_data(name="train")
    assert owner_client.post(url, data).status_code == 302
    e.refresh_from_db()
    assert (e.max_cost, e.max_runtime_minutes, e.stall_minutes, e.limit_action) == (10.0, 120, 15, "TERMINATED")
    edited = e.events.get(kind=Event.Kind.EDIT)  # a guardrail is no spec change: no new generation
    assert "max_cost" in edited.message and e.generation == 1
    owner_client.post(url, {**data, "max_cost": "", "max_runtime_minutes": "", "stall_minutes": "0"})
    e.refresh_from_db()
    assert (e.max_cost, e.max_runtime_minutes, e.stall_minutes) == (None, None, 0)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("max_cost", "-5", "A budget is an amount in $ of at least 0.01"),
        ("max_cost", "0", "A budget is an amount in $ of at least 0.01"),
        ("max_cost", "lots", "A budget is an amount in $ of at least 0.01"),
        ("max_cost", "inf", "A budget is an amount in $ of at least 0.01"),
        ("max_runtime_minutes", "-1", "Give a whole number of minutes, 1 or more"),
        ("max_runtime_minutes", "0", "Give a whole number of minutes, 1 or more"),
        ("max_runtime_minutes", "1.5", "Give a whole number of minutes, 1 or more"),
        ("stall_minutes", "-3", "Give a whole number of minutes, e.g. 15; 0 turns the watchdog off."),
    ],
)
def test_bad_guardrails_are_refused_in_words_and_change_nothing(owner_client, owner, field, value, words):
    e = ExperimentFactory(name="train", command="python train.py", owner=owner, max_cost=5.0)
    events = e.events.count()
    response = owner_client.post(
        reverse("experiments:edit", args=["train"]), guardrail_data(name="train", **{field: value})
    )
    body = response.content.decode()
    assert response.status_code == 200 and words in body and "Not saved" in body
    e.refresh_from_db()
    assert e.max_cost == 5.0 and e.max_runtime_minutes is None and e.stall_minutes is None
    assert e.events.count() == events
    response = owner_client.post(reverse("experiments:create"), guardrail_data(**{field: value}))
    assert response.status_code == 200 and not Experiment.objects.filter(name="new-exp").exists()


def test_a_clone_copies_the_guardrails(owner_client, owner):
    ExperimentFactory(name="train", owner=owner, max_cost=7.5, max_runtime_minutes=30, stall_minutes=5)
    body = owner_client.get(reverse("experiments:clone", args=["train"])).content.decode()
    assert 'name="max_cost" value="7.5"' in body and 'name="max_runtime_minutes" value="30"' in body


# --- the sweep form --------------------------------------------------------------------------


def test_sweep_form_sets_the_sweep_budget(owner_client, owner):
    ExperimentFactory(name="train", command="python train.py", owner=owner)
    body = owner_client.get("/sweeps/new/").content.decode()
    assert 'name="max_cost"' in body and 'name="limit_action"' in body
    data = {"name": "grid", "base": "train", "kind": "grid", "parameters": "lr: 1, 2", "desired_state": "STOPPED"}
    response = owner_client.post("/sweeps/new/", {**data, "max_cost": "-1"})
    assert "A budget is an amount in $ of at least 0.01" in response.content.decode()
    assert not Sweep.objects.exists()
    response = owner_client.post("/sweeps/new/", {**data, "max_cost": "50", "limit_action": "TERMINATED"})
    assert response.status_code == 302
    sweep = Sweep.objects.get(name="grid")
    assert (sweep.max_cost, sweep.limit_action) == (50.0, "TERMINATED")


def test_sweep_page_shows_spend_against_budget(owner_client, owner):
    sweep = SweepFactory(name="grid", max_cost=50, owner=owner)
    for n, cost in ((1, 3.0), (2, 1.25)):
        JobFactory(experiment=ExperimentFactory(name=f"child-{n}", sweep=sweep, owner=owner), attempt=1, cost=cost)
    body = owner_client.get(sweep.get_absolute_url()).content.decode()
    assert "$4.25 of $50" in body and "all are set STOPPED" in body
    Sweep.objects.filter(pk=sweep.pk).update(max_cost=None)
    body = owner_client.get(sweep.get_absolute_url()).content.decode()
    assert "$4.25 spent" in body and "no budget" in body


# --- spend on the list -----------------------------------------------------------------------


def test_list_shows_spend_of_budget_in_the_state_cell(owner_client, owner):
    e = ExperimentFactory(name="train", owner=owner, max_cost=10)
    JobFactory(experiment=e, attempt=1, cost=2.0)
    JobFactory(experiment=e, attempt=2, cost=1.2)
    over = ExperimentFactory(name="spent", owner=owner, max_cost=1.5)
    JobFactory(experiment=over, attempt=1, cost=2.0)
    ExperimentFactory(name="free", owner=owner)
    response = owner_client.get(reverse("experiments:list"))
    body = response.content.decode()
    assert "$3.20 of $10" in body and "$2.00 of $1.50" in body
    rows = {r.experiment.name: r for r in response.context["rows"]}
    assert rows["spent"].over_budget and not rows["train"].over_budget and rows["free"].spend == ""


def test_list_spend_is_one_query_whatever_the_rows(owner_client, owner, django_assert_max_num_queries):
    def count():
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            assert owner_client.get(reverse("experiments:list")).status_code == 200
        return len(ctx.captured_queries)

    e = ExperimentFactory(name="e0", owner=owner, max_cost=10)
    JobFactory(experiment=e, attempt=1, cost=1)
    few = count()
    for n in range(1, 8):
        e = ExperimentFactory(name=f"e{n}", owner=owner, max_cost=10)
        JobFactory(experiment=e, attempt=1, cost=1)
    assert count() == few


def test_list_change_token_follows_spend(owner_client, owner):
    e = ExperimentFactory(name="train", owner=owner, max_cost=10)
    job = JobFactory(experiment=e, attempt=1, cost=1.0)
    from experiments.views import _list_context

    class Request:
        GET = __import__("django.http", fromlist=["QueryDict"]).QueryDict("who=all")
        session = {}
        user = owner

    before = _list_context(Request)["token"]
    type(job).objects.filter(pk=job.pk).update(cost=4.0)
    assert _list_context(Request)["token"] != before


# --- the experiment's status card --------------------------------------------------------------


def test_status_card_shows_spend_runtime_and_last_output(owner_client, owner, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    e = ExperimentFactory(name="train", owner=owner, max_cost=10, max_runtime_minutes=120, stall_minutes=15)
    Experiment.objects.filter(pk=e.pk).update(run_number=1, desired_state="RUNNING", phase="RUNNING")
    JobFactory(experiment=e, attempt=1, run_number=1, cost=3.2, status="FAILED")
    started = timezone.now() - timedelta(minutes=42)
    job = JobFactory(experiment=e, attempt=2, run_number=1, status="RUNNING", started_at=started, cost=None)
    job.log_path = logs.path_for(job)
    job.save()
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(job.log_path).write_text("epoch 1\n")
    printed = time.time() - 14 * 60
    os.utime(job.log_path, (printed, printed))
    response = owner_client.get(e.get_absolute_url())
    body = response.content.decode()
    assert "$3.20 of $10" in body
    assert re.search(r"run 1 has run <time [^>]*>42m( \d+s)?</time> of its 2 h limit", body)
    assert re.search(r"last output <time [^>]*>14m( \d+s)?</time> ago", body)
    assert "the watchdog restarts it after 15 min" in body
    # The live fragment follows a new line of output.
    token = response.context["token"]
    live = f"{e.get_absolute_url()}?part=live&token={token}"
    assert owner_client.get(live, headers=HX).status_code == 204
    os.utime(job.log_path, None)
    assert owner_client.get(live, headers=HX).status_code == 200


def test_status_card_says_why_a_guardrail_halted_it(owner_client, owner):
    e = ExperimentFactory(name="train", owner=owner, max_cost=1)
    Experiment.objects.filter(pk=e.pk).update(
        halt_reason="BudgetExceeded", halt_message="Budget $1.00 reached: its jobs have cost $1.50."
    )
    JobFactory(experiment=e, attempt=1, cost=1.5)
    body = owner_client.get(e.get_absolute_url()).content.decode()
    assert "<strong>BudgetExceeded</strong>: Budget $1.00 reached: its jobs have cost $1.50." in body
    assert "raise the budget" in body and "$1.50 of $1" in body


def test_status_card_without_guardrails_says_what_was_spent(owner_client, owner):
    e = ExperimentFactory(name="train", owner=owner)
    JobFactory(experiment=e, attempt=1, cost=0.5)
    body = owner_client.get(e.get_absolute_url()).content.decode()
    assert "$0.50 spent, no budget" in body and "of its" not in body


# --- orphans on the Clusters page --------------------------------------------------------------


@pytest.fixture
def orphans(db, owner):
    from tests.factories import ClusterFactory

    ExperimentFactory(name="busy", desired_state="RUNNING", owner=owner)
    ExperimentFactory(name="idle", desired_state="STOPPED", owner=owner)
    hours_ago = timezone.now() - timedelta(hours=3)
    return {
        "busy": ClusterFactory(name="sd-busy", hourly_cost=1.0),
        "idle": ClusterFactory(name="sd-idle", hourly_cost=2.5, launched_at=hours_ago),
        "gone": ClusterFactory(name="sd-gone", hourly_cost=0.5),
        "theirs": ClusterFactory(name="someone-else", hourly_cost=0.25, status="STOPPED"),
    }


def test_clusters_page_marks_orphans_with_their_cost_and_age(owner_client, orphans):
    response = owner_client.get(reverse("clusters:list"))
    body = response.content.decode()
    marked = {c.name: c.orphan for c in response.context["clusters"]}
    assert marked == {
        "sd-busy": "",
        "sd-idle": "UP, but idle wants STOPPED.",
        "sd-gone": "No experiment owns it: gone is gone.",
        "someone-else": "No experiment owns it.",
    }
    assert "3 orphans" in body and "$3.00/h" in body  # the orphans that are UP: 2.50 + 0.50
    assert "$2.50/h" in body and "3h 0m" in body
    assert 'value="local/sd-idle"' in body and 'value="local/sd-busy"' not in body
    assert "Stop selected…" in body and "Tear down selected…" in body


def test_clusters_page_keeps_the_ticked_orphans_across_polls(owner_client, orphans):
    first = owner_client.get(reverse("clusters:list"), headers=HX)
    url = reverse("clusters:list") + f"?token={first.context['token']}"
    assert owner_client.get(url, headers=HX).status_code == 204
    ticked = owner_client.get(url + "&selected=local/sd-gone", headers=HX)
    assert ticked.status_code == 200 and 'value="local/sd-gone" id="sel-2" aria-label="Select sd-gone" checked' in (
        ticked.content.decode()
    )


def test_bulk_stop_of_orphans_confirms_then_goes_through_intent_and_the_worker(
    owner_client, orphans, enqueued, local_root
):
    url = reverse("clusters:bulk")
    data = {"action": "stop", "selected": ["local/sd-idle", "local/sd-gone", "local/sd-busy"]}
    page = owner_client.post(url, data)
    body = page.content.decode()
    assert page.status_code == 200 and "Stop 2 orphan clusters?" in body
    assert "<li>sd-idle" in body and "<li>sd-gone" in body and "<li>sd-busy" not in body  # not an orphan
    assert not [m for m in enqueued() if m[0] == "experiments.tasks.cluster_action"]
    response = owner_client.post(url, {**data, "confirmed": "1"}, follow=True)
    said = " ".join(str(m) for m in response.context["messages"])
    assert "Asked to stop 2 clusters (sd-gone, sd-idle)" in said
    sent = sorted(args[:3] for task, args in enqueued() if task == "experiments.tasks.cluster_action")
    # idle already wants STOPPED, so only the worker can stop its cluster; gone has no experiment at all.
    assert sent == [("local", "sd-gone", "stop"), ("local", "sd-idle", "stop")]
    assert Experiment.objects.get(name="busy").desired_state == "RUNNING"
    assert (local_root / "sd-idle").exists() is False  # the web called no backend


def test_bulk_down_of_all_orphans_sets_owned_experiments_terminated(owner_client, orphans, enqueued):
    url = reverse("clusters:bulk")
    page = owner_client.post(url, {"action": "down", "all_orphans": "1"}).content.decode()
    assert "Tear down 3 orphan clusters?" in page and "is set TERMINATED first" in page
    owner_client.post(url, {"action": "down", "all_orphans": "1", "confirmed": "1"})
    assert Experiment.objects.get(name="idle").desired_state == "TERMINATED"
    assert Experiment.objects.get(name="busy").desired_state == "RUNNING"
    sent = sorted(args[1] for task, args in enqueued() if task == "experiments.tasks.cluster_action")
    assert sent == ["sd-gone", "someone-else"]  # sd-idle: the reconciler tears it down for TERMINATED


def test_bulk_with_nothing_selected_or_no_action_changes_nothing(owner_client, orphans, enqueued):
    url = reverse("clusters:bulk")
    response = owner_client.post(url, {"action": "stop", "confirmed": "1"}, follow=True)
    assert "No orphan selected" in " ".join(str(m) for m in response.context["messages"])
    response = owner_client.post(url, {"action": "explode", "all_orphans": "1", "confirmed": "1"}, follow=True)
    assert "Choose Stop or Tear down." in " ".join(str(m) for m in response.context["messages"])
    assert not enqueued() and Experiment.objects.get(name="idle").desired_state == "STOPPED"


def test_bulk_refuses_what_the_user_may_not_change(client, other_user, orphans, enqueued):
    client.force_login(other_user)
    response = client.post(
        reverse("clusters:bulk"), {"action": "down", "selected": ["local/sd-idle"], "confirmed": "1"}, follow=True
    )
    assert "You may not change idle" in " ".join(str(m) for m in response.context["messages"])
    assert Experiment.objects.get(name="idle").desired_state == "STOPPED"
    assert not [m for m in enqueued() if m[0] == "experiments.tasks.cluster_action"]


def test_bulk_needs_a_login_and_a_post(owner_client, orphans):
    from django.test import Client

    response = Client().post(reverse("clusters:bulk"), {"action": "stop", "all_orphans": "1"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert owner_client.get(reverse("clusters:bulk")).status_code == 405


def test_single_stop_of_an_owned_orphan_already_stopped_is_handed_to_the_worker(owner_client, orphans, enqueued):
    url = reverse("clusters:action", args=["local", "sd-idle", "stop"])
    assert "already wants STOPPED, yet it is UP" in owner_client.post(url).content.decode()
    owner_client.post(url, {"confirmed": "1"})
    assert [args[:3] for task, args in enqueued() if task == "experiments.tasks.cluster_action"] == [
        ("local", "sd-idle", "stop")
    ]


# --- the System page -------------------------------------------------------------------------


def test_system_page_shows_the_hourly_cost_of_what_is_up(owner_client, orphans):
    from tests.factories import ClusterFactory

    ClusterFactory(name="unpriced", hourly_cost=None)
    body = owner_client.get(reverse("system")).content.decode()
    # UP: sd-busy 1.00 + sd-idle 2.50 + sd-gone 0.50 + unpriced; someone-else is STOPPED.
    assert "<strong>$4.00/h</strong> for the 4 clusters UP right now" in body
    assert "1 without a price, counted as $0" in body


def test_system_page_with_nothing_up(owner_client):
    assert "No cluster is UP right now" in owner_client.get(reverse("system")).content.decode()


# --- notifications in the account area ----------------------------------------------------------


@pytest.fixture
def receiver():
    from tests.support import Receiver

    r = Receiver()
    yield r
    r.close()


def test_notifications_page_is_in_the_user_menu_and_needs_a_login(owner_client):
    from django.test import Client

    url = reverse("account_notifications")
    assert f'href="{url}">Notifications</a>' in owner_client.get(reverse("account_tokens")).content.decode()
    response = Client().get(url)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    body = owner_client.get(url).content.decode()
    assert "No subscriptions yet" in body and "Nothing sent yet." in body
    assert 'value="job_failed"' in body and 'value="succeeded"' in body


def test_add_a_webhook_for_everything_of_mine(owner_client, owner, receiver):
    from experiments.models import Subscription

    response = owner_client.post(
        reverse("account_notifications"),
        {"target": receiver.url, "topics": ["job_failed", "guardrail"], "scope": "mine"},
        follow=True,
    )
    subscription = Subscription.objects.get()
    assert (subscription.user, subscription.topics, subscription.experiment, subscription.sweep) == (
        owner,
        ["job_failed", "guardrail"],
        None,
        None,
    )
    body = response.content.decode()
    assert "Subscribed json://127.0.0.1" in body and "everything of yours" in body
    assert "A job failed, A budget, runtime limit or the stall watchdog acted" in body
    # The same again is not a second subscription.
    again = {"target": receiver.url, "topics": ["gave_up"], "scope": "mine"}
    owner_client.post(reverse("account_notifications"), again)
    assert Subscription.objects.count() == 1


def test_add_one_for_an_experiment_or_a_sweep_by_name(owner_client, owner):
    from experiments.models import Subscription

    ExperimentFactory(name="train")
    SweepFactory(name="grid")
    url = reverse("account_notifications")
    target = "json://127.0.0.1:9/hook"
    owner_client.post(url, {"target": target, "topics": ["succeeded"], "scope": "experiment", "experiment": "train"})
    owner_client.post(url, {"target": target, "topics": ["sweep_finished"], "scope": "sweep", "sweep": "grid"})
    scopes = sorted(s.scope for s in Subscription.objects.all())
    assert scopes == ["experiment train", "sweep grid"]
    prefilled = owner_client.get(url + "?experiment=train").content.decode()
    assert 'value="train"' in prefilled and 'value="experiment" id="id_scope_1" checked' in prefilled


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"target": "", "topics": ["job_failed"]}, "This field is required."),
        ({"target": "nonsense", "topics": ["job_failed"]}, "Not an email address, nor a URL"),
        ({"target": "bogus://x", "topics": ["job_failed"]}, "bogus:// is not a notification URL"),
        ({"target": "json://127.0.0.1/h", "topics": []}, "Choose at least one kind of event."),
        ({"target": "json://127.0.0.1/h", "topics": ["everything"]}, "Select a valid choice."),
        ({"target": "json://127.0.0.1/h", "topics": ["job_failed"], "scope": "experiment"}, "Name the experiment."),
        (
            {"target": "json://127.0.0.1/h", "topics": ["job_failed"], "scope": "sweep", "sweep": "nope"},
            "No sweep named &#x27;nope&#x27;.",
        ),
        ({"target": "someone@example.org", "topics": ["job_failed"]}, "Email is not configured on this SkyDeck"),
    ],
)
def test_a_bad_subscription_is_refused_in_words(owner_client, settings, data, words):
    from experiments.models import Subscription

    settings.SKYDECK_EMAIL_CONFIGURED = False
    response = owner_client.post(reverse("account_notifications"), {"scope": "mine", **data})
    assert response.status_code == 200 and words in response.content.decode()
    assert not Subscription.objects.exists()


def test_send_a_test_says_whether_it_went(owner_client, owner, receiver):
    from experiments.models import Subscription

    subscription = Subscription.objects.create(user=owner, target=receiver.url, topics=["job_failed"])
    url = reverse("account_subscription_test", args=[subscription.pk])
    response = owner_client.post(url, follow=True)
    assert "Sent a test to json://127.0.0.1" in response.content.decode()
    [body] = receiver.delivered()
    assert body["title"] == "SkyDeck: test notification" and "all experiments they own" in body["message"]
    receiver.statuses = [500]
    response = owner_client.post(url, follow=True)
    assert "The test was not sent: json://127.0.0.1" in response.content.decode()
    assert owner_client.get(url).status_code == 405


def test_send_a_test_by_email(owner_client, owner, settings):
    from django.core import mail

    from experiments.models import Subscription

    settings.SKYDECK_EMAIL_CONFIGURED = True
    subscription = Subscription.objects.create(user=owner, target="owner@example.org", topics=["job_failed"])
    owner_client.post(reverse("account_subscription_test", args=[subscription.pk]))
    assert [m.to for m in mail.outbox] == [["owner@example.org"]]


def test_delete_a_subscription_after_confirming(owner_client, owner):
    from experiments.models import Subscription

    subscription = Subscription.objects.create(user=owner, target="json://127.0.0.1:9/h", topics=["job_failed"])
    url = reverse("account_subscription_delete", args=[subscription.pk])
    page = owner_client.post(url).content.decode()
    assert "Stop telling json://127.0.0.1:9/h?" in page and Subscription.objects.exists()
    owner_client.post(url, {"confirmed": "1"})
    assert not Subscription.objects.exists()


def test_only_its_user_sees_or_changes_a_subscription(client, owner, other_user, receiver):
    from experiments.models import Subscription

    subscription = Subscription.objects.create(user=owner, target=receiver.url + "/secret", topics=["job_failed"])
    client.force_login(other_user)
    assert "secret" not in client.get(reverse("account_notifications")).content.decode()
    for name in ("account_subscription_test", "account_subscription_delete"):
        assert client.post(reverse(name, args=[subscription.pk]), {"confirmed": "1"}).status_code == 404
    assert Subscription.objects.filter(pk=subscription.pk).exists() and not receiver.requests


def test_delivery_history_shows_status_and_error(owner_client, owner):
    from experiments.models import Notification, Subscription

    e = ExperimentFactory(name="train", owner=owner)
    subscription = Subscription.objects.create(user=owner, target="json://127.0.0.1:9/h", topics=["job_failed"])
    sent = Event.objects.create(experiment=e, kind="failure", message="Attempt 1 failed (exit 1).")
    failed = Event.objects.create(experiment=e, kind="give_up", message="Gave up after 3 failures.")
    Notification.objects.create(subscription=subscription, event=sent, status="sent", attempts=1)
    Notification.objects.create(
        subscription=subscription, event=failed, status="failed", attempts=4, last_error="Connection refused"
    )
    other = Subscription.objects.create(user=UserFactory(username="x"), target="json://h/other", topics=["gave_up"])
    Notification.objects.create(subscription=other, event=failed, status="sent")
    body = owner_client.get(reverse("account_notifications")).content.decode()
    assert "Attempt 1 failed (exit 1)." in body and "Gave up after 3 failures." in body
    assert "Connection refused" in body and "4 tries" in body and ">Failed<" in body and ">Sent<" in body
    assert "json://h/other" not in body


def test_notify_me_on_an_experiment_uses_the_last_target(owner_client, owner):
    from experiments.models import Subscription

    e = ExperimentFactory(name="train")
    url = reverse("notify_me_experiment", args=["train"])
    assert "Notify me" in owner_client.get(e.get_absolute_url()).content.decode()
    # No address known yet: asked for one, with the experiment filled in.
    response = owner_client.post(url)
    assert response["Location"] == reverse("account_notifications") + "?experiment=train#add"
    Subscription.objects.create(user=owner, target="json://127.0.0.1:9/h", topics=["job_failed"])
    response = owner_client.post(url, follow=True)
    said = " ".join(str(m) for m in response.context["messages"])
    assert "You will be told about experiment train at json://127.0.0.1:9/h" in said
    subscription = Subscription.objects.get(experiment=e)
    assert "succeeded" in subscription.topics and subscription.user == owner
    assert "Notifying you" in response.content.decode()
    response = owner_client.post(url, follow=True)
    assert "You are already told about experiment train." in " ".join(str(m) for m in response.context["messages"])
    assert Subscription.objects.filter(experiment=e).count() == 1
    assert owner_client.get(url).status_code == 405


def test_notify_me_on_a_sweep_uses_the_email_address(owner_client, owner, settings):
    from experiments.models import Subscription

    settings.SKYDECK_EMAIL_CONFIGURED = True
    owner.email = "owner@example.org"
    owner.save()
    sweep = SweepFactory(name="grid")
    assert "Notify me" in owner_client.get(sweep.get_absolute_url()).content.decode()
    owner_client.post(reverse("notify_me_sweep", args=["grid"]))
    subscription = Subscription.objects.get(sweep=sweep)
    assert subscription.target == "owner@example.org" and "sweep_finished" in subscription.topics
    assert "Notifying you" in owner_client.get(sweep.get_absolute_url()).content.decode()


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
def api(owner):
    from django.test import Client

    from experiments.models import ApiToken

    client = Client(headers={"Authorization": f"Bearer {ApiToken.issue(owner)[1]}"})
    return client


def test_api_subscriptions_list_create_delete(api, owner, other_user):
    from experiments.models import Subscription

    ExperimentFactory(name="train")
    created = api.post(
        "/api/subscriptions",
        {"target": "json://user:pw@127.0.0.1:9/hook/abcdefghijklmnop", "experiment": "train"},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["experiment"] == "train" and body["sweep"] is None and body["scope"] == "experiment train"
    assert body["topics"] == ["job_failed", "gave_up", "sweep_finished", "guardrail", "backend_unreachable"]
    assert "pw" not in body["target"] and "abcdefghijklmnop" not in body["target"]
    again = api.post(
        "/api/subscriptions",
        {"target": "json://user:pw@127.0.0.1:9/hook/abcdefghijklmnop", "experiment": "train"},
        content_type="application/json",
    )
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    theirs = Subscription.objects.create(user=other_user, target="json://h/theirs", topics=["gave_up"])
    listed = api.get("/api/subscriptions").json()
    assert listed["count"] == 1 and [s["id"] for s in listed["items"]] == [body["id"]]
    assert api.get(f"/api/subscriptions/{body['id']}").json()["id"] == body["id"]
    assert api.get(f"/api/subscriptions/{theirs.pk}").status_code == 404
    assert api.delete(f"/api/subscriptions/{theirs.pk}").status_code == 404
    assert api.delete(f"/api/subscriptions/{body['id']}").status_code == 204
    assert list(Subscription.objects.values_list("pk", flat=True)) == [theirs.pk]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"target": "nonsense"}, "target"),
        ({"target": "json://127.0.0.1/h", "topics": []}, "topics"),
        ({"target": "json://127.0.0.1/h", "topics": ["all"]}, "topics"),
        ({"target": "json://127.0.0.1/h", "experiment": "nope"}, "experiment"),
        ({"target": "json://127.0.0.1/h", "sweep": "nope"}, "sweep"),
        ({"target": 5}, "target"),
    ],
)
def test_api_refuses_a_bad_subscription(api, payload, field):
    from experiments.models import Subscription

    response = api.post("/api/subscriptions", payload, content_type="application/json")
    assert response.status_code in (400, 422), response.content
    assert field in response.content.decode()
    assert not Subscription.objects.exists()


def test_api_subscriptions_need_a_user(db):
    from django.test import Client

    assert Client().get("/api/subscriptions").status_code == 401


def test_api_experiment_detail_has_spent_and_the_guardrails(api, owner):
    e = ExperimentFactory(name="train", owner=owner, max_cost=10, max_runtime_minutes=60, stall_minutes=5)
    Experiment.objects.filter(pk=e.pk).update(halt_reason="RuntimeLimitReached", halt_message="Runtime limit 1 h.")
    JobFactory(experiment=e, attempt=1, cost=1.5)
    JobFactory(experiment=e, attempt=2, cost=None)
    body = api.get("/api/experiments/train").json()
    assert body["spent"] == 1.5 and body["max_cost"] == 10 and body["max_runtime_minutes"] == 60
    assert body["limit_action"] == "STOPPED" and body["stall_minutes"] == 5 and body["stall_action"] == "restart"
    assert (body["halt_reason"], body["halt_message"]) == ("RuntimeLimitReached", "Runtime limit 1 h.")
    patched = api.patch("/api/experiments/train", {"max_cost": 20}, content_type="application/json").json()
    assert patched["max_cost"] == 20 and patched["spent"] == 1.5


# --- the admin ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(username="boss", is_staff=True, is_superuser=True))
    return client


def test_admin_failure_rules_are_listed_searchable_and_edited_in_the_list(staff_client):
    from experiments.models import FailureRule

    url = reverse("admin:experiments_failurerule_changelist")
    body = staff_client.get(url).content.decode()
    for reason in (
        "OutOfMemory",
        "Preempted",
        "NetworkError",
        "GPUError",
        "DiskFull",
        "MissingModule",
        "CommandNotFound",
    ):
        assert reason in body
    assert "OutOfMemory" in staff_client.get(url + "?q=CUDA").content.decode()
    rules = list(FailureRule.objects.order_by("position", "id"))
    data = {"form-TOTAL_FORMS": len(rules), "form-INITIAL_FORMS": len(rules), "_save": "Save"}
    for i, rule in enumerate(rules):
        data[f"form-{i}-id"] = rule.pk
        data[f"form-{i}-position"] = rule.position
        if rule.enabled:
            data[f"form-{i}-enabled"] = "on"
    data["form-0-position"] = 999
    data.pop("form-1-enabled", None)
    assert staff_client.post(url, data).status_code == 302
    assert FailureRule.objects.get(pk=rules[0].pk).position == 999
    assert not FailureRule.objects.get(pk=rules[1].pk).enabled


def test_admin_refuses_a_failure_rule_that_matches_nothing(staff_client):
    from experiments.models import FailureRule

    before = FailureRule.objects.count()
    response = staff_client.post(
        reverse("admin:experiments_failurerule_add"),
        {"reason": "Nothing", "kind": "user", "exit_codes": "[]", "pattern": "", "position": 5, "enabled": "on"},
    )
    assert response.status_code == 200 and "a rule with neither matches nothing" in response.content.decode()
    assert FailureRule.objects.count() == before


def test_admin_subscriptions_hide_secrets_and_notifications_are_read_only(staff_client, owner):
    from experiments.models import Notification, Subscription

    e = ExperimentFactory(name="train", owner=owner)
    s = Subscription.objects.create(user=owner, target="json://u:secretpw@h/hook", topics=["gave_up"], experiment=e)
    event = Event.objects.create(experiment=e, kind="give_up", message="Gave up.")
    n = Notification.objects.create(subscription=s, event=event, status="failed", last_error="refused")
    body = staff_client.get(reverse("admin:experiments_subscription_changelist")).content.decode()
    assert "json://…@h/hook" in body and "secretpw" not in body and "experiment train" in body
    assert (
        "secretpw"
        not in staff_client.get(reverse("admin:experiments_subscription_change", args=[s.pk])).content.decode()
    )
    assert staff_client.get(reverse("admin:experiments_subscription_add")).status_code == 403
    assert ">Failed<" in staff_client.get(reverse("admin:experiments_notification_changelist")).content.decode()
    assert staff_client.get(reverse("admin:experiments_notification_add")).status_code == 403
    page = staff_client.get(reverse("admin:experiments_notification_change", args=[n.pk])).content.decode()
    assert "refused" in page and 'name="_save"' not in page


# --- a sweep's budget, set from its page ----------------------------------------------------------


def test_raising_a_spent_sweep_budget_lets_its_experiments_run_again(owner_client, owner):
    from experiments import intent

    sweep = SweepFactory(name="capped", max_cost=4, owner=owner)
    child = ExperimentFactory(name="capped-1", sweep=sweep, owner=owner)
    JobFactory(experiment=child, attempt=1, cost=4.5, status="FAILED")
    assert "over its budget" in intent.over_budget(child)
    page = owner_client.get(sweep.get_absolute_url()).content.decode()
    assert "Raise the budget to run its experiments again" in page
    url = reverse("experiments:sweep_budget", args=["capped"])
    # Bad input: said in words, nothing changes.
    for bad in ("lots", "-3"):
        response = owner_client.post(url, {"max_cost": bad, "limit_action": "STOPPED"}, follow=True)
        assert "amount in $" in response.content.decode()
        assert Sweep.objects.get(pk=sweep.pk).max_cost == 4
    response = owner_client.post(url, {"max_cost": "$10", "limit_action": "TERMINATED"}, follow=True)
    assert "Budget of capped: $10.00." in response.content.decode()
    sweep.refresh_from_db()
    assert (sweep.max_cost, sweep.limit_action) == (10.0, "TERMINATED")
    assert intent.over_budget(Experiment.objects.get(pk=child.pk)) == ""
    assert child.events.filter(message="Budget of sweep capped: $4.00 → $10.00, then TERMINATED.").exists()
    # Cleared: no budget at all.
    owner_client.post(url, {"max_cost": "", "limit_action": "TERMINATED"})
    assert Sweep.objects.get(pk=sweep.pk).max_cost is None


def test_only_who_may_change_a_sweep_sets_its_budget(client, owner):
    sweep = SweepFactory(name="theirs", max_cost=4, owner=owner)
    client.force_login(UserFactory(username="someone-else"))
    assert "Set the budget" not in client.get(sweep.get_absolute_url()).content.decode()
    response = client.post(reverse("experiments:sweep_budget", args=["theirs"]), {"max_cost": "100"}, follow=True)
    assert "only the owner" in response.content.decode()
    assert Sweep.objects.get(pk=sweep.pk).max_cost == 4
