"""The experiment pages and their actions: access, the list, bulk actions, live fragments."""

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import DesiredState, Event, Experiment, Job
from tests.factories import ExperimentFactory, JobFactory

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
    response = client.get(reverse("experiments:list") + "?token=x", headers={**HX, "HX-Current-URL": "http://testserver/?q=alp"})
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")
    assert "q%3Dalp" in response["HX-Redirect"]


@pytest.mark.parametrize("name,args,data", [
    ("experiments:set_state", ["alpha"], {"state": "RUNNING"}),
    ("experiments:bulk", [], {"action": "RUNNING", "selected": "1"}),
    ("experiments:create", [], {"name": "x", "command": "echo"}),
    ("experiments:star", ["alpha"], {}),
])
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


@pytest.mark.parametrize("query,shown,hidden", [
    ("q=alp", ["alpha"], ["beta", "gamma"]),
    ("q=special", ["gamma"], ["alpha"]),
    ("desired=RUNNING", ["beta"], ["alpha", "gamma"]),
    ("state=FAILED", ["gamma"], ["alpha", "beta"]),
    ("backend=skypilot", ["gamma"], ["alpha", "beta"]),
    ("tag=base", ["alpha"], ["beta", "gamma"]),
    ("starred=on", ["beta"], ["alpha", "gamma"]),
    ("state=NOT_A_STATE", ["alpha", "beta", "gamma"], []),
])
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
    exp.set_desired_state("RUNNING")
    changed = owner_client.get(f"/?token={token}", headers=HX)
    assert changed.status_code == 200
    assert changed.context["token"] != token
    JobFactory(experiment=exp, attempt=1, status="RUNNING")
    assert owner_client.get(f"/?token={changed.context['token']}", headers=HX).status_code == 200


def test_polled_table_keeps_the_selection(owner_client, exp):
    other = ExperimentFactory(name="beta")
    body = owner_client.get(f"/?token=stale&selected={exp.pk}", headers=HX).content.decode()
    assert f'id="sel-{exp.pk}" aria-label="Select alpha" checked' in body
    assert f'id="sel-{other.pk}" aria-label="Select beta" >' in body


def _bulk_data(n, jobs_per=2):
    Experiment.objects.bulk_create(
        [Experiment(name=f"bulk-{i}", command="python train.py", flags={"lr": i / 1000, "seed": i % 3}, tags=["t"],
                    backend="local") for i in range(n)]
    )
    jobs = []
    for e in Experiment.objects.all():
        for a in range(1, jobs_per + 1):
            jobs.append(Job(experiment=e, attempt=a, generation=1, backend="local", name=f"sd-{e.name}-{a}",
                            command="x", status="SUCCEEDED"))
    Job.objects.bulk_create(jobs)


@pytest.mark.parametrize("n", [10, 1000])
def test_list_and_polled_fragment_use_a_fixed_number_of_queries(owner_client, django_assert_max_num_queries, n):
    _bulk_data(n)
    with django_assert_max_num_queries(10):
        page = owner_client.get("/?per_page=200")
    assert page.status_code == 200
    with django_assert_max_num_queries(10):
        fragment = owner_client.get("/?per_page=200&tag=t&token=old", headers=HX)
    assert fragment.status_code == 200
    with django_assert_max_num_queries(8):
        unchanged = owner_client.get(f"/?per_page=200&tag=t&token={fragment.context['token']}", headers=HX)
    assert unchanged.status_code == 204


@pytest.mark.parametrize("n", [10, 1000])
def test_detail_live_fragment_uses_a_fixed_number_of_queries(owner_client, django_assert_max_num_queries, n):
    e = ExperimentFactory(name="many")
    Job.objects.bulk_create([Job(experiment=e, attempt=a, generation=1, backend="local", name=f"sd-many-{a}", command="x",
                                 status="FAILED") for a in range(1, n + 1)])
    Event.objects.bulk_create([Event(experiment=e, kind="info", message=f"m{i}") for i in range(n)])
    with django_assert_max_num_queries(10):
        assert owner_client.get(e.get_absolute_url()).status_code == 200
    with django_assert_max_num_queries(10):
        response = owner_client.get(e.get_absolute_url() + "?part=live&token=old", headers=HX)
    assert response.status_code == 200
    with django_assert_max_num_queries(10):
        assert owner_client.get(e.get_absolute_url() + f"?part=live&token={response.context['token']}", headers=HX).status_code == 204


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
    return client.post(reverse("experiments:bulk"), {"action": action, "selected": [str(s) for s in selected], **extra}, follow=True)


def messages_of(response):
    return [str(m) for m in response.context["messages"]]


def test_bulk_set_running_goes_through_desired_state(owner_client, exp, owner):
    beta = ExperimentFactory(name="beta", desired_state="RUNNING")
    response = bulk(owner_client, "RUNNING", [exp.pk, beta.pk])
    assert messages_of(response) == ["1 experiment set to RUNNING; 1 already were."]
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
    response = bulk(owner_client, "RUNNING", all_matching="1", query="q=alp")
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
    exp.command = "python new.py"
    exp.save()
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
