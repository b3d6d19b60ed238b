"""What a client outside can do to SkyDeck, and what it gets back.

A database outage, a load balancer's probe, a guessed password or token, a body
over the limit, escape bytes in an event, the login page itself.
"""

import contextlib
import logging
import socket
import subprocess
import sys
import time

import pytest
from django.core.cache import cache
from django.db import OperationalError, connection
from django.test import Client
from django.urls import reverse

from experiments.models import ApiToken, Event
from tests.factories import ExperimentFactory, UserFactory
from tests.support import ROOT, use_broker

PASSWORD = "correct horse battery"  # the factories' password


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The token limiter counts in the shared cache: no test inherits another's failures.
    cache.clear()
    yield
    cache.clear()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def database_unreachable(tmp_path):
    """The default connection points where no database answers, until the block ends."""
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = str(tmp_path / "no-such-folder" / "db.sqlite3")
    else:
        connection.settings_dict["HOST"] = "127.0.0.1"
        connection.settings_dict["PORT"] = str(_closed_port())
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def _errors_logged(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- 1. a database outage -------------------------------------------------------------------


def test_a_database_outage_is_a_503_with_retry_after_and_heals_by_itself(transactional_db, owner, tmp_path, caplog):
    pages = Client()
    pages.force_login(owner)
    _, key = ApiToken.issue(owner)
    tokens = Client(headers={"Authorization": f"Bearer {key}"})
    assert pages.get("/").status_code == 200

    with database_unreachable(tmp_path):
        caplog.clear()
        page = pages.get("/")
        assert page.status_code == 503
        assert page["Retry-After"].isdigit()
        assert page["Content-Type"].startswith("text/html")
        body = page.content.decode()
        assert "SkyDeck cannot reach its database" in body and "Traceback" not in body
        [record] = _errors_logged(caplog)
        assert record.exc_info is None and "database" in record.getMessage()

        # Under /api/, the API's error shape, with the session or with a token.
        for client in (pages, tokens):
            caplog.clear()
            answer = client.get("/api/experiments")
            assert answer.status_code == 503 and answer["Retry-After"].isdigit()
            assert answer["Content-Type"].startswith("application/json")
            assert set(answer.json()) == {"message", "detail", "field", "errors"}
            assert answer.json()["field"] is None and answer.json()["errors"] == []
            [record] = _errors_logged(caplog)
            assert record.exc_info is None

        # A login needs the database too: 503, not the form's error and not a 500.
        login = Client().post(reverse("login"), {"username": "owner", "password": PASSWORD})
        assert login.status_code == 503

    # The next request after the database is back is served: no restart.
    assert pages.get("/").status_code == 200
    assert tokens.get("/api/experiments").status_code == 200


def test_a_database_error_anywhere_else_is_a_503_too(rf):
    """The last resort (handler500): a database error raised outside the middleware's reach."""
    from skydeck_site.middleware import server_error

    for path, kind in (("/experiments/1/", "text/html"), ("/api/experiments", "application/json")):
        try:
            raise OperationalError("connection refused")
        except OperationalError:
            response = server_error(rf.get(path))
        assert response.status_code == 503 and response["Retry-After"].isdigit()
        assert response["Content-Type"].startswith(kind)
    try:
        raise ValueError("a bug")
    except ValueError:
        assert server_error(rf.get("/")).status_code == 500


# --- 2. the health endpoint -----------------------------------------------------------------


def test_healthz_checks_the_database_and_the_broker_and_says_nothing_else(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": True, "broker": True}
    assert response["Cache-Control"].startswith("max-age=0")


def test_healthz_is_503_with_the_broker_down(client, db):
    with use_broker(f"redis://127.0.0.1:{_closed_port()}/0"):
        started = time.monotonic()
        response = client.get("/healthz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": True, "broker": False}


def test_healthz_is_503_with_the_filesystem_broker_folder_gone(client, db, tmp_path, settings):
    from skydeck_site.celery import app

    options = app.conf.broker_transport_options
    # The app reads its settings under the CELERY namespace.
    app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = {**options, "data_folder_in": str(tmp_path / "gone")}
    try:
        response = client.get("/healthz")
    finally:
        app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = options
    assert response.status_code == 503 and response.json()["broker"] is False


def test_healthz_is_503_with_the_database_down(transactional_db, tmp_path, caplog):
    with database_unreachable(tmp_path):
        caplog.clear()
        response = Client().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": False, "broker": True}
    # The reason goes to the log, in one line, and not to whoever asked.
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.getMessage().startswith("health: answered 503: database: ") and record.exc_info is None


# --- 3. guessed passwords and tokens ---------------------------------------------------------


def test_logins_lock_out_after_ten_failures_for_that_user_from_that_address(client, owner):
    UserFactory(username="colleague")
    for _ in range(11):
        response = client.post(reverse("login"), {"username": "owner", "password": "guess"})
    assert response.status_code == 429
    right = client.post(reverse("login"), {"username": "owner", "password": PASSWORD})
    assert right.status_code == 429
    page = right.content.decode()
    assert "Too many failed logins" in page and "15 minutes" in page
    assert client.get("/").status_code == 302  # not logged in
    # Another user from the same address is not locked out.
    other = client.post(reverse("login"), {"username": "colleague", "password": PASSWORD})
    assert other.status_code == 302


def test_a_successful_login_forgets_earlier_failures(client, owner):
    for _ in range(9):
        client.post(reverse("login"), {"username": "owner", "password": "guess"})
    assert client.post(reverse("login"), {"username": "owner", "password": PASSWORD}).status_code == 302
    client.post(reverse("logout"))
    for _ in range(9):
        client.post(reverse("login"), {"username": "owner", "password": "guess"})
    assert client.post(reverse("login"), {"username": "owner", "password": PASSWORD}).status_code == 302


def test_bad_api_tokens_are_limited_per_address_then_forgiven(client, owner, settings):
    settings.SKYDECK_API_TOKEN_FAILURE_WINDOW = 2
    _, key = ApiToken.issue(owner)
    statuses = [
        client.get("/api/experiments", headers={"Authorization": f"Bearer sdk_wrong{i}"}).status_code for i in range(31)
    ]
    assert statuses[:30] == [401] * 30 and statuses[30] == 429
    refused = client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 2
    body = refused.json()
    assert set(body) == {"message", "detail", "field", "errors"} and "Too many" in body["message"]
    # Another address is not refused.
    elsewhere = client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}, REMOTE_ADDR="10.0.0.9")
    assert elsewhere.status_code == 200
    # Once the window has passed, the right token works again.
    time.sleep(int(refused["Retry-After"]) + 0.1)
    assert client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_a_cache_that_does_not_answer_limits_nothing_and_fails_nothing(client, owner, settings, caplog):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
        }
    }
    _, key = ApiToken.issue(owner)
    assert client.get("/api/experiments", headers={"Authorization": "Bearer sdk_wrong"}).status_code == 401
    assert client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert any("the cache does not answer" in r.getMessage() for r in caplog.records)


def test_the_client_address_is_the_socket_unless_proxies_are_declared(rf, settings):
    from skydeck_site.middleware import client_ip

    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 192.0.2.7")
    settings.SKYDECK_PROXY_COUNT = 0
    assert client_ip(request) == "10.0.0.1"  # a forged header changes nothing
    settings.SKYDECK_PROXY_COUNT = 1
    assert client_ip(request) == "192.0.2.7"  # what the one proxy saw
    settings.SKYDECK_PROXY_COUNT = 3
    assert client_ip(request) == "10.0.0.1"  # fewer hops than declared: not trusted


# --- 4. password reset only with email --------------------------------------------------------


def test_only_login_logout_and_password_change_are_live_by_default(owner_client):
    anonymous = Client()
    for path in ("/accounts/password_reset/", "/accounts/password_reset/done/", "/accounts/reset/done/"):
        assert anonymous.get(path).status_code == 404
        assert owner_client.get(path).status_code == 404
    login = anonymous.get("/accounts/login/")
    assert login.status_code == 200 and "Forgot your password" not in login.content.decode()
    assert owner_client.get("/accounts/password_change/").status_code == 200
    assert anonymous.get("/accounts/password_change/").status_code == 302  # to log in


def test_password_reset_urls_come_with_email(settings):
    from skydeck_site.urls import account_urls

    names = {p.name for p in account_urls(password_reset=True)}
    assert {"password_reset", "password_reset_done", "password_reset_confirm", "password_reset_complete"} <= names
    assert "password_reset" not in {p.name for p in account_urls(password_reset=False)}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "False"),
        ({"EMAIL_HOST": "smtp.example.com"}, "True"),
        ({"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}, "True"),
    ],
)
def test_email_in_the_environment_turns_password_reset_on(env, expected, tmp_path):
    code = "from skydeck_site import settings as s; print(s.SKYDECK_PASSWORD_RESET)"
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SKYDECK_VAR_DIR": str(tmp_path / "var")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


# --- 5. bodies over the limit ------------------------------------------------------------------


def test_a_form_body_over_the_limit_is_a_413_page_without_a_traceback(owner, settings, caplog):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = {"name": "big", "command": "echo " + "x" * 2000}
    csrf_checked = Client(enforce_csrf_checks=True)  # CSRF reads the body before the view does
    csrf_checked.force_login(owner)
    plain = Client()
    plain.force_login(owner)
    for client in (csrf_checked, plain):
        caplog.clear()
        response = client.post(reverse("experiments:create"), big)
        assert response.status_code == 413
        assert response["Content-Type"].startswith("text/html")
        body = response.content.decode()
        assert "too large" in body and "1000 bytes" in body
        assert not [r for r in caplog.records if r.exc_info]
        assert not _errors_logged(caplog)


def test_too_many_form_fields_is_a_400_page(owner_client, settings, caplog):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = owner_client.post(reverse("experiments:create"), {f"f{i}": "x" for i in range(20)})
    assert response.status_code == 400 and "too many fields" in response.content.decode()
    assert not [r for r in caplog.records if r.exc_info]


# --- 6. escape bytes in the admin --------------------------------------------------------------


def test_the_admin_event_list_shows_control_characters_visibly(client, db):
    client.force_login(UserFactory(username="boss", is_staff=True, is_superuser=True))
    Event.objects.create(
        experiment=ExperimentFactory(name="painted"), kind="edit", message="flags: lr=\x1b[31mred\x1b[0m\u202e"
    )
    body = client.get(reverse("admin:experiments_event_changelist")).content.decode()
    assert "\x1b" not in body and "\u202e" not in body
    assert r"lr=\x1b[31mred\x1b[0m\u202e" in body


# --- 7. the login page --------------------------------------------------------------------------


def test_the_login_page_is_a_skydeck_page_with_labelled_fields(client, db):
    page = client.get(reverse("login")).content.decode()
    assert 'class="topbar"' in page and "skydeck.css" in page  # base.html
    assert ">Log in to SkyDeck</h1>" in page
    assert '<label for="id_username">Username' in page and '<label for="id_password">Password' in page
    assert '<button type="submit"' in page and ">Log in</button>" in page
    assert 'class="card account-card"' in page  # the small centred card
