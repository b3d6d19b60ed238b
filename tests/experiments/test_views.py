"""The experiment pages and their actions: access, the list, bulk actions, live fragments."""

import os

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from experiments import intent
from experiments.models import Event, Experiment, Job
from tests.factories import ExperimentFactory, JobFactory
from tests.support import set_state

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}


@pytest.fixture
def exp(db):
    return ExperimentFactory(name="alpha", flags={"lr": 0.1, "model.depth": 3}, tags=["base"])


# --- access -------------------------------------------------------------------------

GET_PAGES = [
    ("experiments:list", []),
    ("experiments:create", []),
    ("experiments:detail", ["alpha"]),
    ("experiments:edit", ["alpha"]),
    ("experiments:clone", ["alpha"]),
    ("experiments:job_detail", ["alpha", 1]),
    ("experiments:job_log", ["alpha", 1]),
    ("experiments:flag_row", []),
    ("experiments:flag_search", []),
    ("clusters:list", []),
    ("system", []),
]
POST_ONLY = [
    ("experiments:bulk", []),
    ("experiments:preview", []),
    ("experiments:set_state", ["alpha"]),
    ("experiments:restart", ["alpha"]),
    ("experiments:star", ["alpha"]),
    ("experiments:delete", ["alpha"]),
    ("clusters:action", ["local", "sd-alpha", "stop"]),
    ("experiments:flag_columns", []),
    ("experiments:sweep_preview", []),
]


@pytest.mark.parametrize("name,args", GET_PAGES + POST_ONLY)
def test_anonymous_is_sent_to_log_in(client, exp, name, args):
    url = reverse(name, args=args)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")
    assert client.post(url).status_code == 302


@pytest.mark.parametrize("name,args", GET_PAGES)
def test_pages_render_for_a_user(owner_client, exp, name, args):
    JobFactory(experiment=exp, attempt=1)
    assert owner_client.get(reverse(name, args=args)).status_code == 200


@pytest.mark.parametrize("name,args", POST_ONLY)
def test_post_only_views_refuse_get(owner_client, exp, name, args):
    assert owner_client.get(reverse(name, args=args)).status_code == 405


def test_htmx_request_from_expired_session_redirects_the_browser(client, exp):
    response = client.get(
        reverse("experiments:list") + "?token=x", headers={**HX, "HX-Current-URL": "http://testserver/?q=alp"}
    )
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")
    assert "q%3Dalp" in response["HX-Redirect"]


@pytest.mark.parametrize(
    "name,args,data",
    [
        ("experiments:set_state", ["alpha"], {"state": "RUNNING"}),
        ("experiments:bulk", [], {"action": "RUNNING", "selected": "1"}),
        ("experiments:create", [], {"name": "x", "command": "echo"}),
        ("experiments:star", ["alpha"], {}),
    ],
)
def test_csrf_is_enforced(owner, exp, name, args, data):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(reverse(name, args=args), data)
    assert response.status_code == 403
    exp.refresh_from_db()
    assert exp.desired_state == "STOPPED" and not exp.starred
    assert not Experiment.objects.filter(name="x").exists()


# --- the list -----------------------------------------------------------------------


def test_empty_state_tells_a_new_user_what_to_do(owner_client):
    body = owner_client.get("/").content.decode()
    assert "No experiments yet" in body
    assert reverse("experiments:create") in body
    assert "local" in body


def test_filter_with_no_match_offers_to_clear(owner_client, exp):
    body = owner_client.get("/?q=nothing-like-this").content.decode()
    assert "No experiment matches these filters" in body


def test_list_shows_differing_flags_as_columns(owner_client, exp):
    ExperimentFactory(name="beta", flags={"lr": 0.2, "model.depth": 3, "extra.on": True})
    body = owner_client.get("/").content.decode()
    assert 'title="flag lr"' in body
    assert 'title="flag extra.on"' in body
    assert 'title="flag model.depth"' not in body  # the same on every row
    assert ">true<" in body


@pytest.mark.parametrize(
    "query,shown,hidden",
    [
        ("q=alp", ["alpha"], ["beta", "gamma"]),
        ("q=special", ["gamma"], ["alpha"]),
        ("desired=RUNNING", ["beta"], ["alpha", "gamma"]),
        ("state=FAILED", ["gamma"], ["alpha", "beta"]),
        ("backend=skypilot", ["gamma"], ["alpha", "beta"]),
        ("tag=base", ["alpha"], ["beta", "gamma"]),
        ("starred=on", ["beta"], ["alpha", "gamma"]),
        ("state=NOT_A_STATE", ["alpha", "beta", "gamma"], []),
    ],
)
def test_filters_live_in_the_url(owner_client, exp, query, shown, hidden):
    ExperimentFactory(name="beta", desired_state="RUNNING", starred=True)
    ExperimentFactory(name="gamma", backend="skypilot", phase="FAILED", description="a special one")
    body = owner_client.get(f"/?{query}").content.decode()
    for name in shown:
        assert f'class="name">{name}<' in body
    for name in hidden:
        assert f'class="name">{name}<' not in body


def test_sort_and_pagination(owner_client):
    for i in range(30):
        ExperimentFactory(name=f"e-{i:02d}")
    body = owner_client.get("/?sort=name&per_page=25").content.decode()
    assert body.index(">e-00<") < body.index(">e-01<")
    assert ">e-29<" not in body
    assert "Page 1 of 2" in body
    assert "sort=name&amp;per_page=25&amp;page=2" in body
    page2 = owner_client.get("/?sort=name&per_page=25&page=2").content.decode()
    assert ">e-29<" in page2


def test_wandb_link_from_template(owner_client, exp, settings):
    settings.SKYDECK_WANDB_URL_TEMPLATE = "https://wandb.ai/team/proj/runs/{name}"
    ExperimentFactory(name="named", flags={"wandb.name": "run-7"})
    body = owner_client.get("/").content.decode()
    assert "https://wandb.ai/team/proj/runs/alpha" in body
    assert "https://wandb.ai/team/proj/runs/run-7" in body


def test_htmx_list_request_renders_the_table_only(owner_client, exp):
    response = owner_client.get("/?q=alp", headers=HX)
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="experiment-table"')
    assert "<html" not in body


def test_polled_table_answers_204_when_nothing_changed(owner_client, exp):
    first = owner_client.get("/", headers=HX)
    token = first.context["token"]
    again = owner_client.get(f"/?token={token}", headers=HX)
    assert again.status_code == 204
    assert again.content == b""
    set_state(exp, "RUNNING")
    changed = owner_client.get(f"/?token={token}", headers=HX)
    assert changed.status_code == 200
    assert changed.context["token"] != token
    JobFactory(experiment=exp, attempt=1, status="RUNNING")
    assert owner_client.get(f"/?token={changed.context['token']}", headers=HX).status_code == 200


def test_polled_table_keeps_the_selection(owner_client, exp):
    other = ExperimentFactory(name="beta")
    body = owner_client.get(f"/?token=stale&selected={exp.pk}", headers=HX).content.decode()
    assert f'id="sel-{exp.pk}" aria-label="Select alpha" checked' in body
    assert f'id="sel-{other.pk}" aria-label="Select beta">' in body


def _bulk_data(n, jobs_per=2):
    Experiment.objects.bulk_create(
        [
            Experiment(
                name=f"bulk-{i}",
                command="python train.py",
                flags={"lr": i / 1000, "seed": i % 3},
                tags=["t"],
                backend="local",
            )
            for i in range(n)
        ]
    )
    jobs = []
    for e in Experiment.objects.all():
        for a in range(1, jobs_per + 1):
            jobs.append(
                Job(
                    experiment=e,
                    attempt=a,
                    generation=1,
                    backend="local",
                    name=f"sd-{e.name}-{a}",
                    command="x",
                    status="SUCCEEDED",
                )
            )
    Job.objects.bulk_create(jobs)


@pytest.mark.parametrize("n", [10, 1000])
def test_list_and_polled_fragment_use_a_fixed_number_of_queries(owner_client, django_assert_max_num_queries, n):
    _bulk_data(n)
    with django_assert_max_num_queries(11):
        page = owner_client.get("/?per_page=200")
    assert page.status_code == 200
    with django_assert_max_num_queries(10):
        fragment = owner_client.get("/?per_page=200&tag=t&token=old", headers=HX)
    assert fragment.status_code == 200
    # Unchanged: the session, the user, the change marker (two reads on PostgreSQL) and the banner's
    # two tables; none of the page's.
    with django_assert_max_num_queries(6) as unchanged_queries:
        unchanged = owner_client.get(f"/?per_page=200&tag=t&token={fragment.context['token']}", headers=HX)
    assert unchanged.status_code == 204
    assert not any("experiments_experiment" in q["sql"] for q in unchanged_queries.captured_queries)


def test_an_unchanged_list_poll_answers_204_until_anything_it_shows_changes(owner_client):
    exp = ExperimentFactory(name="watched", tags=["t"])
    first = owner_client.get("/?tag=t&token=old", headers=HX)
    token = first.context["token"]
    assert owner_client.get(f"/?tag=t&token={token}", headers=HX).status_code == 204
    Experiment.objects.filter(pk=exp.pk).update(description="changed elsewhere")
    changed = owner_client.get(f"/?tag=t&token={token}", headers=HX)
    assert changed.status_code == 200 and "changed elsewhere" in changed.content.decode()
    # What the request asks for is part of the token: another page size is another fragment.
    assert owner_client.get(f"/?tag=t&per_page=100&token={changed.context['token']}", headers=HX).status_code == 200
    # The control loop's own bookkeeping does not count as a change.
    token = changed.context["token"]
    Experiment.objects.filter(pk=exp.pk).update(last_reconciled_at=timezone.now())
    assert owner_client.get(f"/?tag=t&token={token}", headers=HX).status_code == 204


def test_the_list_draws_a_row_again_only_when_what_it_shows_changed(owner_client):
    from django.core.cache import caches

    caches["rows"].clear()
    a = ExperimentFactory(name="row-a", tags=["r"], phase="PENDING")
    ExperimentFactory(name="row-b", tags=["r"])

    def drawn(response):
        return [t.name for t in response.templates].count("row")  # the partial, by its name

    first = owner_client.get("/?tag=r", headers=HX)
    assert drawn(first) == 2
    again = owner_client.get("/?tag=r", headers=HX)
    assert drawn(again) == 0 and again.content == first.content  # both rows kept, the same bytes
    Experiment.objects.filter(pk=a.pk).update(phase="FAILED", status_reason="RestartLimitReached")
    JobFactory(experiment=a, attempt=1, status="FAILED")
    changed = owner_client.get("/?tag=r", headers=HX)
    assert drawn(changed) == 1  # only the row that changed
    body = changed.content.decode()
    assert "RestartLimitReached" in body and "row-b" in body
    # What the row shows for this request (its selection) is part of what is kept.
    selected = owner_client.get(f"/?tag=r&selected={a.pk}", headers=HX)
    assert drawn(selected) == 1 and 'class="is-selected"' in selected.content.decode()


@pytest.mark.parametrize("n", [10, 1000])
def test_detail_live_fragment_uses_a_fixed_number_of_queries(owner_client, django_assert_max_num_queries, n):
    e = ExperimentFactory(name="many")
    Job.objects.bulk_create(
        [
            Job(
                experiment=e,
                attempt=a,
                generation=1,
                backend="local",
                name=f"sd-many-{a}",
                command="x",
                status="FAILED",
            )
            for a in range(1, n + 1)
        ]
    )
    Event.objects.bulk_create([Event(experiment=e, kind="info", message=f"m{i}") for i in range(n)])
    with django_assert_max_num_queries(10):
        assert owner_client.get(e.get_absolute_url()).status_code == 200
    with django_assert_max_num_queries(10):
        response = owner_client.get(e.get_absolute_url() + "?part=live&token=old", headers=HX)
    assert response.status_code == 200
    # Unchanged: the session, the user, the running job's log, the change marker and the banner's tables.
    with django_assert_max_num_queries(7) as unchanged_queries:
        assert (
            owner_client.get(
                e.get_absolute_url() + f"?part=live&token={response.context['token']}", headers=HX
            ).status_code
            == 204
        )
    assert not any("experiments_event" in q["sql"] for q in unchanged_queries.captured_queries)


def test_the_detail_poll_answers_204_until_the_experiment_changes_or_its_job_prints(owner_client, settings, tmp_path):
    settings.VAR_DIR = tmp_path  # where job output lives (the only place logs are read from)
    e = ExperimentFactory(name="printing", desired_state="RUNNING", phase="RUNNING")
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "out.log"
    log.write_text("step 1\n")
    JobFactory(experiment=e, attempt=1, status="RUNNING", log_path=str(log))
    live = e.get_absolute_url() + "?part=live&token="
    token = owner_client.get(live + "old", headers=HX).context["token"]
    assert owner_client.get(live + token, headers=HX).status_code == 204
    # The job prints: "last output" moves, so the part is drawn again.
    os.utime(log, (log.stat().st_atime, log.stat().st_mtime + 5))
    printed = owner_client.get(live + token, headers=HX)
    assert printed.status_code == 200
    token = printed.context["token"]
    assert owner_client.get(live + token, headers=HX).status_code == 204
    # Anything the page shows changes, wherever it was written.
    Experiment.objects.filter(pk=e.pk).update(status_message="attempt 1 is running on the new node")
    changed = owner_client.get(live + token, headers=HX)
    assert changed.status_code == 200 and "attempt 1 is running on the new node" in changed.content.decode()


def test_star_toggles(owner_client, exp):
    response = owner_client.post(reverse("experiments:star", args=["alpha"]), headers=HX)
    assert response.status_code == 200
    assert 'aria-pressed="true"' in response.content.decode()
    exp.refresh_from_db()
    assert exp.starred
    owner_client.post(reverse("experiments:star", args=["alpha"]))
    exp.refresh_from_db()
    assert not exp.starred


# --- bulk actions -------------------------------------------------------------------


def bulk(client, action, selected=(), **extra):
    return client.post(
        reverse("experiments:bulk"), {"action": action, "selected": [str(s) for s in selected], **extra}, follow=True
    )


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def test_bulk_set_running_goes_through_desired_state(owner_client, exp, owner):
    beta = ExperimentFactory(name="beta", desired_state="RUNNING")
    response = bulk(owner_client, "RUNNING", [exp.pk, beta.pk])
    assert messages_of(response) == ["1 experiment set to RUNNING; 1 already was RUNNING."]
    exp.refresh_from_db()
    assert exp.desired_state == "RUNNING" and exp.run_number == 1
    event = exp.events.get(kind=Event.Kind.DESIRED_STATE)
    assert event.user == owner and event.data == {"from": "STOPPED", "to": "RUNNING"}


def test_bulk_terminate_asks_for_confirmation_first(owner_client, exp):
    response = bulk(owner_client, "TERMINATED", [exp.pk])
    assert "Terminate 1 experiment?" in response.content.decode()
    exp.refresh_from_db()
    assert exp.desired_state == "STOPPED"
    response = bulk(owner_client, "TERMINATED", [exp.pk], confirmed="1")
    exp.refresh_from_db()
    assert exp.desired_state == "TERMINATED"
    assert messages_of(response) == ["1 experiment set to TERMINATED."]


def test_bulk_on_all_matching_the_filter(owner_client, exp):
    ExperimentFactory(name="alpine", tags=["base"])
    ExperimentFactory(name="other")
    response = bulk(owner_client, "STOPPED", all_matching="1", query="q=alp")
    plan = bulk(owner_client, "RUNNING", all_matching="1", query="q=alp")
    assert "alpine" in plan.content.decode() and "other" not in plan.content.decode()  # the plan, first
    assert not Experiment.objects.filter(desired_state="RUNNING").exists()
    response = bulk(owner_client, "RUNNING", all_matching="1", query="q=alp", confirmed="1")
    assert messages_of(response) == ["2 experiments set to RUNNING."]
    assert set(Experiment.objects.filter(desired_state="RUNNING").values_list("name", flat=True)) == {"alpha", "alpine"}
    assert response.redirect_chain[-1][0] == "/?q=alp"


def test_bulk_clone_tag_and_untag(owner_client, exp):
    response = bulk(owner_client, "clone", [exp.pk])
    copy = Experiment.objects.get(name="alpha-copy")
    assert copy.flags == exp.flags and copy.desired_state == "STOPPED"
    assert "alpha-copy" in messages_of(response)[0]
    bulk(owner_client, "clone", [exp.pk])
    assert Experiment.objects.filter(name="alpha-copy-2").exists()
    response = bulk(owner_client, "tag_add", [exp.pk, copy.pk], tag="keep")
    assert messages_of(response) == ["Tagged 2 experiments “keep”."]
    exp.refresh_from_db()
    assert exp.tags == ["base", "keep"]
    bulk(owner_client, "tag_remove", [exp.pk], tag="base")
    exp.refresh_from_db()
    assert exp.tags == ["keep"]
    response = bulk(owner_client, "tag_add", [exp.pk], tag="bad tag!")
    assert "Give a tag" in messages_of(response)[0]


def test_bulk_delete_skips_experiments_with_an_active_job(owner_client, exp):
    busy = ExperimentFactory(name="busy")
    JobFactory(experiment=busy, attempt=1, status="RUNNING")
    response = bulk(owner_client, "delete", [exp.pk, busy.pk], confirmed="1")
    assert not Experiment.objects.filter(name="alpha").exists()
    assert Experiment.objects.filter(name="busy").exists()
    assert "Deleted 1 experiment. Kept 1 with a job still active (busy)" in messages_of(response)[0]


def test_bulk_without_selection_or_action_says_so(owner_client, exp):
    assert "No experiments selected" in messages_of(bulk(owner_client, "RUNNING"))[0]
    assert "Choose an action" in messages_of(bulk(owner_client, "", [exp.pk]))[0]


# --- single actions -----------------------------------------------------------------


def test_set_state_and_terminate_confirmation(owner_client, exp):
    owner_client.post(reverse("experiments:set_state", args=["alpha"]), {"state": "RUNNING"})
    exp.refresh_from_db()
    assert exp.desired_state == "RUNNING"
    response = owner_client.post(reverse("experiments:set_state", args=["alpha"]), {"state": "TERMINATED"})
    assert "Terminate alpha?" in response.content.decode()
    exp.refresh_from_db()
    assert exp.desired_state == "RUNNING"
    owner_client.post(reverse("experiments:set_state", args=["alpha"]), {"state": "TERMINATED", "confirmed": "1"})
    exp.refresh_from_db()
    assert exp.desired_state == "TERMINATED"
    response = owner_client.post(reverse("experiments:set_state", args=["alpha"]), {"state": "BOGUS"}, follow=True)
    assert "not a desired state" in messages_of(response)[-1]


def test_restart(owner_client, exp):
    owner_client.post(reverse("experiments:restart", args=["alpha"]))
    exp.refresh_from_db()
    assert exp.desired_state == "RUNNING" and exp.run_number == 1
    assert exp.events.filter(kind=Event.Kind.RESTART).exists()


def test_delete_is_refused_while_a_job_is_active(owner_client, exp):
    JobFactory(experiment=exp, attempt=1, status="RUNNING")
    response = owner_client.post(reverse("experiments:delete", args=["alpha"]), {"confirmed": "1"}, follow=True)
    assert Experiment.objects.filter(name="alpha").exists()
    assert "was not deleted: attempt 1 is still RUNNING" in messages_of(response)[0]


def test_delete_after_confirmation(owner_client, exp):
    response = owner_client.post(reverse("experiments:delete", args=["alpha"]))
    assert "Delete alpha?" in response.content.decode()
    assert Experiment.objects.filter(name="alpha").exists()
    owner_client.post(reverse("experiments:delete", args=["alpha"]), {"confirmed": "1"})
    assert not Experiment.objects.filter(name="alpha").exists()


def test_detail_shows_status_jobs_events_and_out_of_date(owner_client, exp):
    exp.status_reason, exp.status_message = "Running", "Attempt 1 is running."
    exp.save()
    JobFactory(experiment=exp, attempt=1, status="RUNNING", generation=1, cluster_name="sd-alpha", exit_code=None)
    intent.edit(intent.Actor.system("cli"), exp, {"command": "python new.py"})
    Event.record(exp, Event.Kind.INFO, "hello from the timeline")
    body = owner_client.get(exp.get_absolute_url()).content.decode()
    assert "Attempt 1 is running." in body
    assert "sd-alpha" in body
    assert "hello from the timeline" in body
    assert "Restart to apply" in body
    assert "python new.py lr=0.1 model.depth=3" in body
    assert reverse("experiments:job_log", args=["alpha", 1]) in body


def test_detail_live_fragment_swaps_the_log_panel_when_a_new_job_starts(owner_client, exp):
    JobFactory(experiment=exp, attempt=1, status="SUCCEEDED")
    url = exp.get_absolute_url() + "?part=live&token=x&log_attempt=1"
    assert 'id="log-panel"' not in owner_client.get(url, headers=HX).content.decode()
    JobFactory(experiment=exp, attempt=2, status="RUNNING")
    body = owner_client.get(url, headers=HX).content.decode()
    assert 'id="log-panel" class="card log-panel" aria-labelledby="log-title" hx-swap-oob="true"' in body
    assert reverse("experiments:job_log", args=["alpha", 2]) in body


def test_unknown_experiment_is_404(owner_client):
    assert owner_client.get("/experiments/nope/").status_code == 404
    assert owner_client.post("/experiments/nope/state/", {"state": "RUNNING"}).status_code == 404


# --- a next attempt only when one will come -----------------------------------------------

GAVE_UP = [
    ("RestartLimitReached", "on_failure", "the restart limit was reached"),
    ("Failed", "never", "the restart policy is “never”"),
    ("NoCloudAccess", "on_failure", "sky check"),
]


def _failed(name, reason, policy, **extra):
    from datetime import timedelta

    from django.utils import timezone

    return ExperimentFactory(
        name=name,
        desired_state="RUNNING",
        run_number=2,
        reconciled_run=2,
        phase="FAILED",
        status_reason=reason,
        restart_policy=policy,
        max_restarts=2,
        failure_count=3,
        # Left behind by the last backoff: it says nothing once the reconciler gave up.
        next_attempt_at=timezone.now() + timedelta(minutes=5),
        **extra,
    )


@pytest.mark.parametrize("reason,policy,explained", GAVE_UP)
def test_no_next_attempt_is_shown_once_the_reconciler_gave_up(owner_client, reason, policy, explained):
    from tests.factories import SweepFactory

    sweep = SweepFactory(name="gave-up")
    e = _failed("given-up", reason, policy, sweep=sweep)
    JobFactory(experiment=e, attempt=3, run_number=2, status="FAILED", exit_code=1)
    detail = owner_client.get(e.get_absolute_url()).content.decode()
    assert "next attempt" not in detail.lower()
    assert "No more attempts" in detail and explained in detail
    assert "▶ Run again" in detail and "starts run 3" in detail
    assert "next attempt" not in owner_client.get("/").content.decode().lower()
    assert "next attempt" not in owner_client.get(sweep.get_absolute_url()).content.decode().lower()


def test_a_next_attempt_is_shown_while_backing_off(owner_client):
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import SweepFactory

    sweep = SweepFactory(name="backing-off")
    at = timezone.now() + timedelta(seconds=90)
    e = ExperimentFactory(
        name="retrying",
        desired_state="RUNNING",
        run_number=1,
        phase="BACKOFF",
        status_reason="BackingOff",
        status_message="Next attempt in 90s.",
        restart_policy="on_failure",
        failure_count=1,
        next_attempt_at=at,
        sweep=sweep,
    )
    JobFactory(experiment=e, attempt=1, run_number=1, status="FAILED", exit_code=1)
    detail = owner_client.get(e.get_absolute_url()).content.decode()
    assert f'Attempt 1 failed; next attempt <time datetime="{at.isoformat()}" data-relative="until"' in detail
    assert f"(at {at:%H:%M:%S} UTC)" in detail
    assert "No more attempts" not in detail and "▶ Run again" not in detail
    for page in ("/", sweep.get_absolute_url()):
        body = owner_client.get(page).content.decode()
        assert "BackingOff · next attempt <time" in body, page


# --- a finished run reads as finished, and Run starts a new one -----------------------------


def _finished(name="done", phase="SUCCEEDED", run=3, **extra):
    e = ExperimentFactory(name=name, desired_state="RUNNING", run_number=run, phase=phase, reconciled_run=run, **extra)
    JobFactory(experiment=e, attempt=run, run_number=run, status="SUCCEEDED" if phase == "SUCCEEDED" else "FAILED")
    return e


def test_a_finished_run_reads_as_finished_not_as_about_to_run(owner_client):
    e = _finished(status_message="Attempt 3 succeeded.")
    body = owner_client.get("/").content.decode()
    row = body[body.index(f'id="row-{e.pk}"') :]
    row = row[: row.index("</tr>")]
    assert 'Succeeded</span> <span class="muted small run-finished">· run 3 finished</span>' in row
    assert "d-running" not in row  # no "→ RUNNING"
    assert ">Run again</button>" in row
    detail = owner_client.get(e.get_absolute_url()).content.decode()
    assert "· run 3 finished" in detail and "Run 3 has finished: attempt 3 succeeded" in detail
    assert "Attempt 3 succeeded." not in detail  # said once, by the next step
    assert "▶ Run again" in detail and "↻ Restart" not in detail


@pytest.mark.parametrize("phase", ["SUCCEEDED", "FAILED"])
def test_run_on_a_finished_experiment_starts_a_new_run(owner_client, owner, phase):
    e = _finished(phase=phase)
    response = owner_client.post(reverse("experiments:set_state", args=["done"]), {"state": "RUNNING"}, follow=True)
    assert messages_of(response) == ["done: run 3 had finished; run 4 starts now."]
    e.refresh_from_db()
    assert e.run_number == 4 and e.desired_state == "RUNNING"
    assert e.events.get(kind=Event.Kind.RESTART).user == owner


def test_run_never_cancels_a_job_that_runs(owner_client):
    e = _finished()
    JobFactory(experiment=e, attempt=4, run_number=3, status="RUNNING")  # the phase is not updated yet
    response = owner_client.post(reverse("experiments:set_state", args=["done"]), {"state": "RUNNING"}, follow=True)
    assert messages_of(response) == ["done is already RUNNING (succeeded, run 3)."]
    e.refresh_from_db()
    assert e.run_number == 3 and not e.events.filter(kind=Event.Kind.RESTART).exists()


def test_bulk_run_starts_finished_ones_again_and_sets_the_others(owner_client, exp):
    done = _finished()
    going = ExperimentFactory(name="going", desired_state="RUNNING", run_number=1, phase="RUNNING")
    response = bulk(owner_client, "RUNNING", [exp.pk, done.pk, going.pk])
    assert messages_of(response) == [
        "Started 1 finished experiment again (a new run each: done run 4); "
        "1 experiment set to RUNNING; 1 already was RUNNING."
    ]
    done.refresh_from_db(), exp.refresh_from_db(), going.refresh_from_db()
    assert (done.run_number, exp.run_number, going.run_number) == (4, 1, 1)


def test_run_is_refused_for_someone_elses_experiment(client, other_user):
    e = _finished()
    client.force_login(other_user)
    response = bulk(client, "RUNNING", [e.pk])
    assert "You may not change done" in messages_of(response)[0]
    e.refresh_from_db()
    assert e.run_number == 3


# --- a failed job's error summary -------------------------------------------------------------

TRACEBACK = (
    "epoch 1\n\x1b[31mTraceback (most recent call last):\n"
    '  File "train.py", line 3, in <module>\n    1 / 0\n'
    "ZeroDivisionError: division by zero\x1b[0m\n"
)


def _with_output(job, data):
    from pathlib import Path

    from experiments import logs

    path = Path(logs.path_for(job))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    job.log_path = str(path)
    job.save(update_fields=["log_path"])
    return job


def test_a_crash_is_summarised_by_the_last_lines_of_its_output(owner_client):
    e = ExperimentFactory(
        name="crashes", desired_state="RUNNING", run_number=1, reconciled_run=1, phase="FAILED", status_reason="Failed"
    )
    job = _with_output(JobFactory(experiment=e, attempt=1, run_number=1, status="FAILED", exit_code=1), TRACEBACK)
    assert job.error_message == ""
    body = owner_client.get(e.get_absolute_url()).content.decode()
    # The jobs table: the line that names the exception, the rest on hover.
    assert '<span title="epoch 1\nTraceback (most recent call last):' in body
    assert ">ZeroDivisionError: division by zero</span>" in body
    # The status card: the end of the output, colours removed.
    card = body[body.index('class="error-summary"') :]
    card = card[: card.index("</pre>")]
    assert "1 / 0\nZeroDivisionError: division by zero" in card and "\x1b" not in card


def test_an_error_message_wins_over_the_output_and_a_success_has_no_summary(owner_client):
    e = ExperimentFactory(name="explained", desired_state="RUNNING", run_number=1, phase="FAILED")
    _with_output(
        JobFactory(experiment=e, attempt=1, status="FAILED_LAUNCH", error_message="No cloud is enabled."), TRACEBACK
    )
    _with_output(JobFactory(experiment=e, attempt=2, status="SUCCEEDED"), TRACEBACK)
    body = owner_client.get(e.get_absolute_url()).content.decode()
    assert "No cloud is enabled." in body
    assert "ZeroDivisionError" not in body


def test_a_poll_answered_204_reads_no_output(owner_client, monkeypatch):
    from experiments import logs

    e = ExperimentFactory(name="polled", desired_state="RUNNING", run_number=1, phase="FAILED")
    _with_output(JobFactory(experiment=e, attempt=1, status="FAILED"), TRACEBACK)
    url = e.get_absolute_url() + "?part=live"
    token = owner_client.get(url + "&token=x", headers=HX).context["token"]
    monkeypatch.setattr(logs, "tail", lambda *a, **k: pytest.fail("read the output for an unchanged fragment"))
    assert owner_client.get(url + f"&token={token}", headers=HX).status_code == 204


# --- times count on in the browser, so polls answer 204 while nothing changes -------------------


def test_ages_and_durations_are_times_the_browser_advances(owner_client, exp):
    JobFactory(experiment=exp, attempt=1, status="RUNNING", started_at=exp.created_at)
    body = owner_client.get("/").content.decode()
    assert f'<td class="col-age"><time datetime="{exp.created_at.isoformat()}" data-relative' in body
    assert f'<td class="col-duration"><time datetime="{exp.created_at.isoformat()}" data-relative' in body
    assert "data-now=" in body and "static/js/skydeck.js" in body


def test_change_tokens_do_not_depend_on_the_clock(owner_client, exp, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    JobFactory(experiment=exp, attempt=1, status="RUNNING", started_at=exp.created_at)
    list_token = owner_client.get("/", headers=HX).context["token"]
    detail = exp.get_absolute_url() + "?part=live"
    detail_token = owner_client.get(detail + "&token=x", headers=HX).context["token"]
    later = timezone.now() + timedelta(minutes=10)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert owner_client.get(f"/?token={list_token}", headers=HX).status_code == 204
    assert owner_client.get(detail + f"&token={detail_token}", headers=HX).status_code == 204


# --- rows per page, flag columns ---------------------------------------------------------------


def _rows_select(body):
    select = body[body.index('<select name="per_page"') :]
    return select[: select.index("</select>")]


@pytest.mark.parametrize("url", ["/", "/?tag=base", "/?tag=sweep:s1", "/?q=alp&page=1"])
def test_rows_shows_the_page_size_in_force_on_a_link_without_per_page(owner_client, exp, url):
    body = owner_client.get(url).content.decode()
    assert '<option value="50" selected>' in _rows_select(body)
    assert '<option value="25" selected>' not in body
    # The filters follow the URL, not what the browser remembers of the last visit.
    assert 'aria-label="Filter experiments" autocomplete="off"' in body


def test_flag_columns_leave_out_a_flag_set_on_one_row_only(owner_client):
    for i in range(3):
        ExperimentFactory(name=f"f-{i}", flags={"lr": i / 10, "seed": 1})
    ExperimentFactory(name="odd-one", flags={"lr": 0.5, "seed": 1, "only.here": 7})
    body = owner_client.get("/").content.decode()
    assert 'title="flag lr"' in body
    assert 'title="flag only.here"' not in body and 'title="flag seed"' not in body
    chooser = body[body.index('class="menu columns-menu"') :]
    assert 'value="only.here"' in chooser and 'value="seed"' in chooser


def test_chosen_flag_columns_are_remembered(owner_client, exp):
    ExperimentFactory(name="beta", flags={"lr": 0.2, "model.depth": 3})
    response = owner_client.post(
        reverse("experiments:flag_columns"),
        {"column": ["model.depth", "gone.flag", "bad key!"], "next": "/?q=a"},
    )
    assert response.status_code == 302 and response["Location"] == "/?q=a"
    assert owner_client.session["experiment_list_flag_columns"] == ["model.depth", "gone.flag"]
    body = owner_client.get("/").content.decode()
    assert 'title="flag model.depth"' in body  # the same on every row, shown because chosen
    assert 'title="flag lr"' not in body and 'title="flag gone.flag"' not in body
    assert "Flag columns · your choice" in body
    assert 'value="gone.flag" id="col-1" form="flag-columns-form" checked' in body  # kept for other pages
    fragment = owner_client.get("/?token=x", headers=HX)
    assert fragment.context["flag_columns"] == ["model.depth"]
    owner_client.post(reverse("experiments:flag_columns"), {"automatic": "1"})
    body = owner_client.get("/").content.decode()
    assert 'title="flag lr"' in body and 'title="flag model.depth"' not in body
    assert owner_client.get(reverse("experiments:flag_columns")).status_code == 405


def test_a_long_flag_value_is_cut_with_the_full_text_on_hover(owner_client, exp):
    long = "x" * 60
    ExperimentFactory(name="beta", flags={"lr": 0.2, "note": long})
    ExperimentFactory(name="gamma", flags={"lr": 0.3, "note": "short"})
    body = owner_client.get("/").content.decode()
    assert f'<span title="{long}">{"x" * 39}…</span>' in body


# --- the words of the pages --------------------------------------------------------------------


def test_a_running_experiment_reads_as_one_state_and_one_message(owner_client, exp):
    exp.desired_state, exp.phase, exp.status_message, exp.run_number = "RUNNING", "RUNNING", "Attempt 1 is running.", 1
    exp.save()
    JobFactory(experiment=exp, attempt=1, status="RUNNING")
    body = owner_client.get(exp.get_absolute_url()).content.decode()
    line = body[body.index('class="status-line"') :]
    line = line[: line.index("</div>")]
    assert '<span class="badge big s-run"' in line and ">Running</span>" in line
    assert "d-running" not in line and "desired" not in line.lower()
    assert '<span aria-hidden="true">· </span>Attempt 1 is running.' in line
    exp.desired_state = "STOPPED"
    exp.phase = "STOPPING"
    exp.save()
    body = owner_client.get(exp.get_absolute_url()).content.decode()
    assert '<span class="visually-hidden">, on the way to</span>' in body and 'aria-label="wanted"' not in body


@pytest.mark.parametrize(
    "jobs,says",
    [(0, "It has no jobs. This cannot be undone."), (1, "Its 1 job and its events"), (2, "Its 2 jobs and")],
)
def test_delete_confirmation_counts_jobs_in_words(owner_client, exp, jobs, says):
    for attempt in range(1, jobs + 1):
        JobFactory(experiment=exp, attempt=attempt)
    body = owner_client.post(reverse("experiments:delete", args=["alpha"])).content.decode()
    assert says in body and "job(s)" not in body


def test_terminate_says_what_it_will_do_as_things_are(owner_client, exp):
    from tests.factories import ClusterFactory

    url = reverse("experiments:set_state", args=["alpha"])
    body = owner_client.post(url, {"state": "TERMINATED"}).content.decode()
    assert "It has no cluster to tear down. The job history stays." in body and "cancelled" not in body
    ClusterFactory(name="sd-alpha")
    body = owner_client.post(url, {"state": "TERMINATED"}).content.decode()
    assert "Cluster sd-alpha is torn down: its disk is lost." in body and "cancelled" not in body
    JobFactory(experiment=exp, attempt=2, status="RUNNING")
    body = owner_client.post(url, {"state": "TERMINATED"}).content.decode()
    assert "Attempt 2 is cancelled. Cluster sd-alpha is torn down" in body
    other = ExperimentFactory(name="beta")
    response = owner_client.post(
        reverse("experiments:bulk"), {"action": "TERMINATED", "selected": [str(exp.pk), str(other.pk)]}
    )
    assert "1 running job is cancelled and 1 cluster is torn down (disks are lost)." in response.content.decode()


def test_an_ended_job_without_output_has_no_empty_log_box(owner_client, exp):
    JobFactory(experiment=exp, attempt=1, status="SUCCEEDED")
    body = owner_client.get(exp.get_absolute_url()).content.decode()
    assert '<pre id="log" class="log" tabindex="0" aria-label="Output of attempt 1">' in body  # no data-active
    chunk = owner_client.get(reverse("experiments:job_log", args=["alpha", 1]) + "?offset=0", headers=HX)
    assert 'role="status" data-empty>Attempt #1 ended (Succeeded) without output.' in chunk.content.decode()


def test_a_run_asked_for_reads_as_on_its_way_until_the_reconciler_has_looked(owner_client):
    e = _finished()
    intent.restart(intent.Actor.system("cli"), e)  # run 4; the phase still says how run 3 ended
    body = owner_client.get("/").content.decode()
    row = body[body.index(f'id="row-{e.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "run 4 finished" not in row and "d-running" in row and ">Run</button>" in row
    response = owner_client.post(reverse("experiments:set_state", args=["done"]), {"state": "RUNNING"}, follow=True)
    assert messages_of(response) == ["done is already RUNNING (succeeded, run 4)."]  # a second press starts nothing
    e.refresh_from_db()
    assert e.run_number == 4
