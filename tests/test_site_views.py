"""The System page and the banner every page shows when data may be stale."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clusters.models import BackendHealth, Heartbeat
from tests.factories import ClusterFactory, ExperimentFactory

pytestmark = pytest.mark.django_db
HX = {"HX-Request": "true"}


@pytest.fixture
def clusters(db):
    ExperimentFactory(name="mine", desired_state="RUNNING")
    return ClusterFactory(name="sd-mine"), ClusterFactory(name="someone-else", backend="skypilot", hourly_cost=3.1)


def test_system_page_reports_loops_backends_queue_and_counts(owner_client, clusters, settings):
    now = timezone.now()
    Heartbeat.objects.create(
        name="poll", started_at=now - timedelta(seconds=2), finished_at=now, duration=1.5, summary="local: 1 cluster"
    )
    BackendHealth.objects.create(
        backend="skypilot", reachable=False, unreachable_since=now, last_error="connection refused"
    )
    body = owner_client.get(reverse("system")).content.decode()
    assert "took 1.50 s" in body and "on time" in body and "local: 1 cluster" in body
    assert "never ran" in body  # reconcile
    assert "unreachable" in body and "connection refused" in body
    assert "Queue depth" in body
    assert "?who=all&amp;desired=RUNNING" in body


def test_queue_depth_is_unknown_when_the_broker_cannot_be_read(settings):
    from skydeck_site.views import queue_depth

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    assert queue_depth() is None
    settings.CELERY_BROKER_URL = "memory://"
    assert queue_depth() is None


def test_banner_warns_when_the_poller_is_late_or_a_backend_unreachable(owner_client, settings):
    settings.SKYDECK_BACKENDS = ["local", "skypilot"]
    body = owner_client.get("/").content.decode()
    assert "The poller has never run" in body
    old = timezone.now() - timedelta(hours=1)
    Heartbeat.objects.create(name="poll", started_at=old, finished_at=old, duration=1)
    Heartbeat.objects.create(name="reconcile", started_at=old, finished_at=old, duration=1)
    BackendHealth.objects.create(backend="skypilot", reachable=False, unreachable_since=old, last_error="boom")
    body = owner_client.get(reverse("clusters:list")).content.decode()
    assert "The poller is late" in body and "The reconciler is late" in body
    assert "Backend skypilot is unreachable" in body and "boom" in body
    Heartbeat.objects.filter(name__in=["poll", "reconcile"]).update(finished_at=timezone.now())
    BackendHealth.objects.filter(backend="skypilot").update(reachable=True)
    assert 'role="alert"' not in owner_client.get(reverse("system")).content.decode()


def test_polled_fragments_carry_the_banner_out_of_band(owner_client):
    body = owner_client.get("/?token=x", headers=HX).content.decode()
    assert '<div id="system-banner" hx-swap-oob="true">' in body


def test_login_and_logout(client, owner):
    page = client.get(reverse("login")).content.decode()
    assert 'name="username"' in page and 'name="password"' in page
    response = client.post(reverse("login"), {"username": "owner", "password": "correct horse battery"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.get(reverse("logout")).status_code == 405
    client.post(reverse("logout"))
    assert client.get("/").status_code == 302
    bad = client.post(reverse("login"), {"username": "owner", "password": "wrong"})
    assert bad.status_code == 200 and "correct username and password" in bad.content.decode()


def test_favicon_is_served_to_anyone(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"].endswith("/favicon.svg")
    assert "max-age=86400" in response["Cache-Control"]
    assert client.get(response["Location"]).status_code == 200
    assert 'rel="icon" href="/static/favicon.svg"' in client.get(reverse("login")).content.decode()


def test_system_page_counts_every_experiment_once_and_has_no_empty_table(owner_client, settings):
    body = owner_client.get(reverse("system")).content.decode()
    assert "No experiments yet" in body and "<table" not in body.split('id="counts-title"')[1]
    for i in range(3):
        ExperimentFactory(name=f"e{i}", phase="FAILED" if i else "RUNNING", desired_state="RUNNING")
    section = owner_client.get(reverse("system")).content.decode().split('id="counts-title"')[1]
    section = section[: section.index("</section>")]
    assert "3 experiments, 0 active jobs" in section
    assert "<table" not in section and "By desired state" not in section
    assert '?who=all&amp;state=FAILED" class="count-link"><span class="badge s-bad">Failed</span> 2</a>' in section
    running = '<span class="badge d-running">RUNNING</span> 3</a>'
    assert f'?who=all&amp;desired=RUNNING" class="count-link">{running}' in section
    assert "STOPPED" not in section  # no count of zero


def test_the_admin_keeps_names_on_one_line(client, db):
    from tests.factories import UserFactory

    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    ExperimentFactory(name="a-long-hyphenated-name")
    body = client.get("/admin/experiments/experiment/").content.decode()
    assert "#result_list .field-name" in body and "white-space: nowrap" in body
    assert 'class="field-name"' in body


# --- the API's docs: every endpoint needs a user, and Swagger UI comes from SkyDeck itself ---------


def _docs_need_a_user():
    from experiments.api import api

    return api.docs_decorator is not None


def _ninja_serves_its_own_swagger():
    from django.conf import settings

    return "ninja" in settings.INSTALLED_APPS


# Until the API module and the settings are configured (see the docstrings); strict, so the marks go once they are.
needs_docs_login = pytest.mark.xfail(
    not _docs_need_a_user(), reason="experiments/api/__init__.py: docs_decorator=docs_need_a_user", strict=True
)
needs_local_swagger = pytest.mark.xfail(
    not _ninja_serves_its_own_swagger(), reason='settings.INSTALLED_APPS: "ninja"', strict=True
)


@needs_docs_login
def test_api_docs_and_schema_need_a_login_or_a_token(client, owner):
    from experiments.models import ApiToken

    docs = client.get("/api/docs", headers={"Accept": "text/html,application/xhtml+xml"})
    assert docs.status_code == 302 and docs["Location"] == "/accounts/login/?next=/api/docs"
    schema = client.get("/api/openapi.json", headers={"Accept": "application/json"})
    assert schema.status_code == 401 and schema["WWW-Authenticate"] == 'Bearer realm="skydeck"'
    assert schema.json()["message"] == "Authentication required: log in, or send Authorization: Bearer <token>."
    assert client.get("/api/openapi.json", headers={"Authorization": "Bearer sdk_wrong"}).status_code == 401
    _, key = ApiToken.issue(owner)
    with_token = client.get("/api/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert with_token.status_code == 200 and "/api/experiments" in with_token.json()["paths"]
    client.force_login(owner)
    assert client.get("/api/openapi.json").status_code == 200
    assert client.get("/api/docs").status_code == 200


@needs_local_swagger
def test_api_docs_load_swagger_ui_from_skydeck_not_from_a_cdn(owner_client):
    body = owner_client.get("/api/docs").content.decode()
    assert '<script src="/static/ninja/swagger-ui-bundle.js">' in body
    assert "cdn" not in body.lower() and "https://" not in body
    assert owner_client.get("/static/ninja/swagger-ui-bundle.js").status_code == 200
    assert owner_client.get("/static/ninja/swagger-ui.css").status_code == 200
