"""Guardrails in a real browser: set them on the form, watch a real job's last output count on
and its runtime limit stop it; subscribe a webhook and send a test; stop orphans in bulk."""

import re

import pytest
from playwright.sync_api import expect

from experiments.models import Experiment, Subscription
from tests.factories import ClusterFactory, ExperimentFactory
from tests.support import log_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LONG = 120_000  # a real job stopped by a one-minute limit on a busy machine; a wait, not a timed assertion

QUIET = "python3 -c \"print('epoch 1', flush=True); import time; time.sleep(600)\""


def test_a_runtime_limit_set_on_the_form_stops_a_real_job(page, control_loop, screenshots):
    log_in(page)
    page.goto("/experiments/new/")
    page.get_by_label("Name", exact=True).fill("limited")
    page.locator("#id_command").fill(QUIET)
    page.get_by_label("Backend").select_option("local")
    guardrails = page.locator("#guardrails")
    expect(guardrails).to_contain_text("Guardrails")
    guardrails.get_by_label("Budget ($)").fill("-3")
    page.get_by_role("button", name="Create experiment").click()
    expect(page.locator(".form-errors")).to_contain_text("budget")
    expect(page.locator("#guardrails")).to_contain_text("A budget is an amount in $ of at least 0.01")
    assert not Experiment.objects.filter(name="limited").exists()

    guardrails = page.locator("#guardrails")
    guardrails.get_by_label("Budget ($)").fill("25")
    guardrails.get_by_label("Runtime limit (minutes)").fill("1")
    guardrails.get_by_label("When a limit is reached").select_option("TERMINATED")
    guardrails.get_by_label("Stall watchdog (minutes)").fill("30")
    guardrails.get_by_label("When a job stalls").select_option("flag")
    page.get_by_label("Desired state").select_option("RUNNING")
    page.get_by_role("button", name="Create experiment").click()
    page.wait_for_url("**/experiments/limited/")
    e = Experiment.objects.get(name="limited")
    assert (e.max_cost, e.max_runtime_minutes, e.limit_action, e.stall_minutes, e.stall_action) == (
        25.0,
        1,
        "TERMINATED",
        30,
        "flag",
    )

    card = page.locator(".status-card")
    expect(card.locator(".guardrails")).to_contain_text("$0.00 of $25", timeout=LONG)
    last = card.locator(".last-output time[data-relative]")
    expect(last).to_be_visible(timeout=LONG)
    expect(card.locator(".last-output")).to_contain_text("the watchdog flags it after 30 min")
    expect(card.locator(".guardrails")).to_contain_text("of its 1 min limit")
    first = last.inner_text()
    expect(last).not_to_have_text(first, timeout=10_000)  # it counts on in the browser, no request needed
    page.screenshot(path=str(screenshots / "guardrails-running.png"), full_page=True)

    # A minute into the run, the reconciler halts it; the live card says why, with the figures.
    expect(card.locator(".halted")).to_contain_text("RuntimeLimitReached", timeout=LONG)
    expect(card.locator(".halted")).to_contain_text("Runtime limit 1 min reached")
    wait_for(lambda: Experiment.objects.filter(name="limited", desired_state="TERMINATED").exists(), timeout=30)
    expect(page.locator("#events")).to_contain_text("Runtime limit 1 min reached", timeout=LONG)
    page.screenshot(path=str(screenshots / "guardrails-halted.png"), full_page=True)
    assert not control_loop, control_loop


def test_subscribe_a_webhook_send_a_test_and_stop_orphans(page, owner, screenshots):
    from tests.support import Receiver

    receiver = Receiver()
    try:
        ExperimentFactory(name="train", owner=owner)
        log_in(page)
        page.goto("/experiments/train/")
        page.get_by_role("button", name="Notify me").click()
        page.wait_for_url("**/account/notifications/?experiment=train#add")
        expect(page.locator(".messages")).to_contain_text("Say where to send notifications about experiment train")
        form = page.locator("#add")
        expect(form.get_by_label("One experiment")).to_be_checked()
        form.get_by_label("Send to").fill(receiver.url)
        form.get_by_label("A run succeeded").check()
        form.get_by_role("button", name="Subscribe").click()
        expect(page.locator(".messages")).to_contain_text("Subscribed json://127.0.0.1")
        row = page.locator("table.subscriptions tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("experiment train")
        subscription = Subscription.objects.get()
        assert "succeeded" in subscription.topics and subscription.experiment.name == "train"

        row.get_by_role("button", name=re.compile("Send a test")).click()
        expect(page.locator(".messages")).to_contain_text("Sent a test to json://127.0.0.1")
        assert [b["title"] for b in receiver.delivered()] == ["SkyDeck: test notification"]
        receiver.statuses = [500, 500, 500]
        page.locator("table.subscriptions tbody tr").get_by_role("button", name=re.compile("Send a test")).click()
        expect(page.locator(".messages")).to_contain_text("The test was not sent")
        page.screenshot(path=str(screenshots / "notifications.png"), full_page=True)

        page.goto("/experiments/train/")
        expect(page.get_by_role("link", name="Notifying you")).to_be_visible()
        page.locator(".user-menu summary").click()
        page.locator(".user-menu").get_by_role("link", name="Notifications").click()
        page.wait_for_url("**/account/notifications/")
        page.locator("table.subscriptions").get_by_role("button", name=re.compile("Delete")).click()
        expect(page.locator("#confirm-title")).to_contain_text("Stop telling json://127.0.0.1")
        page.get_by_role("button", name="Delete subscription").click()
        expect(page.locator(".messages")).to_contain_text("is no longer told about experiment train")
        assert not Subscription.objects.exists()
    finally:
        receiver.close()

    # Orphans: one UP under an experiment that wants STOPPED, one nobody owns; tick them and stop both.
    ExperimentFactory(name="idle", owner=owner, desired_state="STOPPED")
    ClusterFactory(name="sd-idle", hourly_cost=2.5)
    ClusterFactory(name="stray", hourly_cost=1.25)
    ClusterFactory(name="sd-train", status="STOPPED")
    page.goto("/clusters/")
    expect(page.locator(".cluster-summary")).to_contain_text("2 orphans")
    expect(page.locator(".cluster-summary")).to_contain_text("$3.75/h")
    page.get_by_label("Select sd-idle").check()
    page.get_by_label("Select stray").check()
    page.get_by_role("button", name="Stop selected…").click()
    expect(page.locator("#confirm-title")).to_have_text("Stop 2 orphan clusters?")
    expect(page.locator(".confirm-items")).to_contain_text("sd-idle")
    expect(page.locator(".confirm-items")).to_contain_text("stray")
    page.screenshot(path=str(screenshots / "orphans-confirm.png"), full_page=True)
    page.get_by_role("button", name="Stop 2", exact=True).click()
    page.wait_for_url("**/clusters/")
    expect(page.locator(".messages")).to_contain_text("Asked to stop 2 clusters (sd-idle, stray)")

    page.goto("/system/")
    expect(page.locator(".up-cost")).to_contain_text("$3.75/h for the 2 clusters UP right now")
