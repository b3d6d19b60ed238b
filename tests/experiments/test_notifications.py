"""Notifications: from an event to a subscription's service, once, retried, never in the control loop's way.

The receiver is a real HTTP server on 127.0.0.1 that apprise's JSON webhook
(``json://``) posts to; email goes to Django's test outbox.
"""

import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from experiments import notify
from experiments.models import Event, Notification, Subscription
from experiments.notification_models import redact
from experiments.tasks import run_poll, run_reconcile_all
from tests.factories import ExperimentFactory, SweepFactory, UserFactory
from tests.support import Receiver, set_state, wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    made = []

    def make(statuses=()):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def failed_event(experiment, message="Attempt 1: RUNNING → FAILED (exit code 1)"):
    return Event.record(experiment, Event.Kind.FAILURE, message, data={"notify": "job_failed"})


def test_an_event_reaches_a_webhook_once(receiver, owner):
    hook = receiver()
    exp = ExperimentFactory(name="trainer", owner=owner)
    Subscription.objects.create(user=owner, target=hook.url, topics=["job_failed"])
    event = failed_event(exp)
    first = notify.fan_out(event.pk)
    assert notify.fan_out(event.pk) == []  # the task ran twice: still one notification
    (pk,) = first
    assert notify.deliver(pk) is True
    assert notify.deliver(pk) is False  # sent already: not sent again
    (body,) = hook.delivered()
    assert body["title"] == "SkyDeck: A job failed — trainer"
    assert body["message"] == "trainer: Attempt 1: RUNNING → FAILED (exit code 1)"
    sent = Notification.objects.get(pk=pk)
    assert (sent.status, sent.attempts, sent.last_error) == ("sent", 1, "")


def test_a_failing_service_is_recorded_and_raised_for_the_retry(receiver, owner):
    hook = receiver([500])
    exp = ExperimentFactory(name="flaky", owner=owner)
    Subscription.objects.create(user=owner, target=hook.url, topics=["job_failed"])
    (pk,) = notify.fan_out(failed_event(exp).pk)
    with pytest.raises(notify.DeliveryFailed):
        notify.deliver(pk)
    pending = Notification.objects.get(pk=pk)
    assert (pending.status, pending.attempts) == ("pending", 1) and pending.last_error
    assert notify.deliver(pk) is True
    assert Notification.objects.get(pk=pk).attempts == 2 and len(hook.delivered()) == 1
    # On the last try a failure is final.
    (other,) = notify.fan_out(failed_event(exp, "again").pk)
    hook.statuses = [500]
    with pytest.raises(notify.DeliveryFailed):
        notify.deliver(other, last_try=True)
    assert Notification.objects.get(pk=other).status == "failed"


def test_who_is_told_what(owner, other_user):
    mine = ExperimentFactory(name="mine", owner=owner)
    theirs = ExperimentFactory(name="theirs", owner=other_user)
    sweep = SweepFactory(name="grid", owner=owner)
    child = ExperimentFactory(name="grid-1", owner=other_user, sweep=sweep)
    everything = Subscription.objects.create(user=owner, target="json://127.0.0.1:9/a", topics=["job_failed"])
    one = Subscription.objects.create(
        user=owner, target="json://127.0.0.1:9/b", topics=["job_failed"], experiment=theirs
    )
    of_sweep = Subscription.objects.create(
        user=owner, target="json://127.0.0.1:9/c", topics=["job_failed", "sweep_finished"], sweep=sweep
    )
    Subscription.objects.create(user=owner, target="json://127.0.0.1:9/d", topics=["job_failed"], enabled=False)
    successes = Subscription.objects.create(user=owner, target="json://127.0.0.1:9/e", topics=["succeeded"])

    def told(event):
        return set(notify.subscriptions_for(event))

    assert told(failed_event(mine)) == {everything}  # all I own (the disabled one stays silent)
    assert told(failed_event(theirs)) == {one}  # someone else's, subscribed to by name
    assert told(failed_event(child)) == {of_sweep}  # a sweep's child
    finished = Event.record(
        child, Event.Kind.INFO, "Sweep grid finished", data={"notify": "sweep_finished", "sweep": sweep.pk}
    )
    assert told(finished) == {of_sweep}  # the owner's catch-all is not subscribed to sweep_finished
    ok = Event.record(mine, Event.Kind.JOB, "Attempt 1: RUNNING → SUCCEEDED", data={"notify": "succeeded"})
    assert told(ok) == {successes}
    assert told(Event.record(mine, Event.Kind.INFO, "no topic")) == set()


def test_email_when_an_address_is_all_there_is(owner, settings):
    settings.SKYDECK_EMAIL_CONFIGURED = True
    exp = ExperimentFactory(name="mailed", owner=owner)
    Subscription.objects.create(user=owner, target="ana@example.org", topics=["gave_up"])
    event = Event.record(exp, Event.Kind.GIVE_UP, "Gave up: Attempt 3 failed", data={"notify": "gave_up"})
    (pk,) = notify.fan_out(event.pk)
    assert notify.deliver(pk)
    (message,) = mail.outbox
    assert message.to == ["ana@example.org"]
    assert message.subject == "SkyDeck: An experiment gave up — mailed"
    assert "mailed: Gave up: Attempt 3 failed" in message.body


def test_a_target_must_be_usable(settings):
    settings.SKYDECK_EMAIL_CONFIGURED = False
    user = UserFactory()

    def problem(target):
        try:
            Subscription(user=user, target=target, topics=["job_failed"]).full_clean()
        except ValidationError as exc:
            return " ".join(exc.message_dict.get("target", []))
        return ""

    assert problem("json://127.0.0.1:8000/hook") == ""
    assert problem("slack://T000/B000/XXXXXXXXXXXXXXXX") == ""
    assert "not a notification URL" in problem("nosuch://example.org")
    assert "Email is not configured" in problem("ana@example.org")
    assert "Not an email address" in problem("example.org")
    settings.SKYDECK_EMAIL_CONFIGURED = True
    assert problem("ana@example.org") == ""
    with pytest.raises(ValidationError, match="Choose at least one"):
        Subscription(user=user, target="json://127.0.0.1/x", topics=[]).full_clean()


def test_targets_are_shown_without_their_secrets():
    assert redact("slack://T1234/B5678/abcdefghijklmnopqrstuvwx") == "slack://T1234/B5678/…"
    assert redact("json://user:secret@hooks.example.org/h") == "json://…@hooks.example.org/h"
    assert redact("ana@example.org") == "ana@example.org"


def test_a_real_failed_job_notifies_through_the_control_loop(local_root, owner, receiver, settings):
    """The event the poller records when a local job fails is the one told (the topic is on the event)."""
    hook = receiver()
    Subscription.objects.create(user=owner, target=hook.url, topics=["job_failed", "gave_up"])
    exp = ExperimentFactory(name="real-fail", command="echo boom >&2; exit 3", owner=owner)
    set_state(exp, "RUNNING", owner)
    wait_for(lambda: (run_poll(), run_reconcile_all()) and exp.jobs.filter(status="FAILED").exists(), 30, 0.2, "FAILED")
    wait_for(lambda: (run_reconcile_all(), exp.events.filter(kind="give_up").exists())[1], 10, 0.2, "gave up")
    topics = [e.data.get("notify") for e in exp.events.order_by("id") if e.data.get("notify")]
    assert topics == ["job_failed", "gave_up"]
    for event in exp.events.exclude(data__notify=None).exclude(data__notify="").order_by("id"):
        for pk in notify.fan_out(event.pk):
            notify.deliver(pk)
    assert [b["title"] for b in hook.delivered()] == [
        "SkyDeck: A job failed — real-fail",
        "SkyDeck: An experiment gave up — real-fail",
    ]


def test_a_sweep_that_finishes_is_told_once(local_root, owner):
    sweep = SweepFactory(name="tiny", owner=owner)
    children = [ExperimentFactory(name=f"tiny-{i}", command="echo ok", sweep=sweep, owner=owner) for i in range(2)]
    for child in children:
        set_state(child, "RUNNING", owner)

    def finished():
        run_poll()
        run_reconcile_all()
        return Event.objects.filter(data__notify="sweep_finished").exists()

    wait_for(finished, 30, 0.2, "the sweep to finish")
    for _ in range(2):
        run_poll()
        run_reconcile_all()
    (event,) = Event.objects.filter(data__notify="sweep_finished")
    assert event.message == "Sweep tiny finished: 2 succeeded."
    sweep.refresh_from_db()
    assert sweep.finished_at is not None


@pytest.mark.celery
@pytest.mark.worker_env(SKYDECK_NOTIFY_RETRY_SECONDS="0.5")
def test_the_worker_retries_a_failing_service_and_the_loop_never_waits_for_it(celery_worker_process, owner, receiver):
    hook = receiver([500, 500])
    Subscription.objects.create(user=owner, target=hook.url, topics=["job_failed"])
    exp = ExperimentFactory(name="worker-fail", command="exit 1", owner=owner)
    set_state(exp, "RUNNING", owner)
    # The experiment settles while the service still refuses: delivery is the worker's business, not the loop's.
    wait_for(lambda: phase_of(exp) == "FAILED", 60, 0.3, "FAILED through the worker")
    wait_for(lambda: len(hook.delivered()) == 1, 60, 0.3, "the notification, on the third try")
    notification = Notification.objects.get()
    assert (notification.status, notification.attempts) == ("sent", 3)
    assert [status for status, _ in hook.requests] == [500, 500, 200]


def phase_of(exp):
    exp.refresh_from_db()
    return exp.phase
