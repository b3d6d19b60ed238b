"""The dashboard in a real browser: log in, create, run, watch, stop, bulk act."""

import pytest
from playwright.sync_api import expect

from experiments.models import Experiment
from tests.factories import ExperimentFactory
from tests.support import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LONG = 60_000  # a real job on a busy CI machine; a wait, not a timed assertion

COMMAND = """bash -c 'printf "\\033[32mtraining with %s\\033[0m\\n" "$*"; sleep 1; echo finished' train"""


def test_log_in_create_run_and_watch_the_log(page, control_loop, screenshots):
    page.goto("/")
    assert "/accounts/login/" in page.url
    page.screenshot(path=screenshots / "login.png")
    log_in(page)
    expect(page.get_by_text("No experiments yet")).to_be_visible()
    page.screenshot(path=screenshots / "empty.png", full_page=True)

    page.get_by_role("link", name="New experiment").first.click()
    page.locator("#id_name").fill("browser-run")
    page.locator("#id_command").fill(COMMAND)
    page.locator("#id_backend").select_option("local")

    page.get_by_role("button", name="+ Add flag").click()
    row = page.locator(".flag-row").nth(0)
    expect(row).to_be_visible()
    row.get_by_label("Key").fill("epochs")
    row.get_by_label("Type").select_option("integer")
    row = page.locator(".flag-row").nth(0)
    expect(row.get_by_label("Value")).to_have_attribute("inputmode", "numeric")  # re-rendered for its type
    row.get_by_label("Value").fill("3")

    page.get_by_role("button", name="+ Add flag").click()
    row2 = page.locator(".flag-row").nth(1)
    expect(row2).to_be_visible()
    row2.get_by_label("Key").fill("fast")
    row2.get_by_label("Type").select_option("boolean")
    # the row is re-rendered by the server with a checkbox for the boolean
    checkbox = page.locator(".flag-row").nth(1).locator("input[type=checkbox]")
    expect(checkbox).to_be_visible()
    checkbox.check()
    expect(page.locator("#command-preview")).to_contain_text("train epochs=3 fast=true")
    page.screenshot(path=screenshots / "form.png", full_page=True)

    page.get_by_role("button", name="Create experiment").click()
    expect(page.get_by_role("heading", name="browser-run")).to_be_visible()
    experiment = Experiment.objects.get(name="browser-run")
    assert experiment.flags == {"epochs": 3, "fast": True}

    page.get_by_role("button", name="▶ Run").click()
    jobs = page.locator("table.jobs")
    expect(jobs).to_contain_text("Succeeded", timeout=LONG)
    log = page.locator("#log-text")
    expect(log).to_contain_text("training with epochs=3 fast=true", timeout=LONG)
    expect(log).to_contain_text("finished", timeout=LONG)
    expect(log.locator(".ansi-fg-green")).to_have_text("training with epochs=3 fast=true")
    expect(page.locator(".status-card")).to_contain_text("Succeeded", timeout=LONG)
    page.screenshot(path=screenshots / "detail.png", full_page=True)
    assert control_loop == []


def test_stop_a_running_experiment(page, control_loop, screenshots):
    ExperimentFactory(
        name="sleeper", command="bash -c 'echo sleeping; sleep 300'", desired_state="RUNNING", run_number=1
    )
    log_in(page)
    page.goto("/experiments/sleeper/")
    expect(page.locator("table.jobs")).to_contain_text("Running", timeout=LONG)
    expect(page.locator("#log-text")).to_contain_text("sleeping", timeout=LONG)
    page.get_by_role("button", name="■ Stop").click()
    expect(page.locator(".messages")).to_contain_text("desired state set to STOPPED")
    expect(page.locator("table.jobs")).to_contain_text("Cancelled", timeout=LONG)
    expect(page.locator(".status-card")).to_contain_text("Stopped", timeout=LONG)

    page.goto("/clusters/")
    expect(page.locator("#cluster-table")).to_contain_text("sd-sleeper", timeout=LONG)
    page.screenshot(path=screenshots / "clusters.png", full_page=True)
    page.goto("/system/")
    expect(page.get_by_role("heading", name="Control loop")).to_be_visible()
    page.screenshot(path=screenshots / "system.png", full_page=True)
    assert control_loop == []


def test_bulk_action_on_a_filtered_selection(page, control_loop, screenshots):
    for name in ("sweep-a-1", "sweep-a-2", "sweep-a-3"):
        ExperimentFactory(name=name, tags=["grid"], flags={"lr": float(name[-1]) / 10, "seed": 1})
    ExperimentFactory(name="unrelated", tags=["grid"])
    log_in(page)
    expect(page.locator("#experiment-table")).to_contain_text("unrelated")

    page.get_by_label("Search").fill("sweep-a")
    expect(page.locator("#experiment-table")).not_to_contain_text("unrelated")
    assert "q=sweep-a" in page.url  # the filter lives in the URL
    expect(page.locator("#experiment-table tbody tr")).to_have_count(3)

    # keyboard: focus the page checkbox and tick it with the space bar
    page.get_by_label("Select all on this page").focus()
    page.keyboard.press("Space")
    expect(page.locator("#selection-count")).to_have_text("3 selected")
    page.get_by_label("Action", exact=True).select_option("tag_add")
    page.locator("#bulk-tag").fill("picked")
    page.screenshot(path=screenshots / "bulk.png", full_page=True)
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.locator(".messages")).to_contain_text("Tagged 3 experiments “picked”.")
    assert sorted(Experiment.objects.filter(tags__icontains="picked").values_list("name", flat=True)) == [
        "sweep-a-1",
        "sweep-a-2",
        "sweep-a-3",
    ]
    assert "q=sweep-a" in page.url

    # all matching the filter, destructive: the plan lists each one and what will happen to it first
    page.get_by_label("All 3 matching the filter").check()
    page.get_by_label("Action", exact=True).select_option("TERMINATED")
    page.get_by_role("button", name="Apply to selected").click()
    expect(page.get_by_role("heading", name="Terminate 3 experiments?")).to_be_visible()
    expect(page.locator(".plan-rows")).to_contain_text("sweep-a-2")
    expect(page.locator(".plan-rows")).not_to_contain_text("unrelated")
    page.get_by_role("button", name="Terminate 3").click()
    expect(page.locator(".messages")).to_contain_text("3 experiments set to TERMINATED.")
    assert set(Experiment.objects.filter(desired_state="TERMINATED").values_list("name", flat=True)) == {
        "sweep-a-1",
        "sweep-a-2",
        "sweep-a-3",
    }

    # the row stays selected through a live update
    page.get_by_label("Select sweep-a-1").check()
    Experiment.objects.filter(name="sweep-a-1").update(description="changed behind the scenes")
    expect(page.locator("#experiment-table")).to_contain_text("changed behind the scenes", timeout=LONG)
    expect(page.get_by_label("Select sweep-a-1")).to_be_checked()
    page.screenshot(path=screenshots / "experiments.png", full_page=True)
    assert control_loop == []
