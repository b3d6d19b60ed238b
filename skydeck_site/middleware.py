"""Where a request meets SkyDeck: who must log in, who the client is, and what a failure looks like.

A database outage is a 503 with ``Retry-After`` (the API's JSON under /api/, a small page
elsewhere) and a body over the limit a 413 page: never a 500 and never a traceback in the log.
"""

import logging
import sys

from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.shortcuts import resolve_url
from django.template import loader
from django.utils.log import log_response
from django.views import defaults

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
BODY_ERRORS = (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)


def client_ip(request):
    """The client's address: the socket's, or the one the outermost of SKYDECK_PROXY_COUNT proxies saw.

    Each proxy appends the address it was reached from to X-Forwarded-For, so only the last
    SKYDECK_PROXY_COUNT entries are theirs; anything before them is whatever the client wrote.
    """
    count = settings.SKYDECK_PROXY_COUNT
    if count:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= count:
            return hops[-count]
    return request.META.get("REMOTE_ADDR", "")


def _is_api(request):
    return request.path.startswith("/api/")


def database_unavailable(request, exc):
    """503 with Retry-After; the error in one line of the log, without its stack."""
    message = "SkyDeck cannot reach its database; it retries by itself. Try again in a moment."
    if _is_api(request):
        # The API's error shape (experiments.api.errors).
        response = JsonResponse({"message": message, "detail": message, "field": None, "errors": []}, status=503)
    else:
        # Rendered without the request: the context processors would ask the database again.
        response = HttpResponse(loader.render_to_string("503.html", {"message": message}), status=503)
    response["Retry-After"] = str(settings.SKYDECK_DATABASE_RETRY_AFTER)
    # The response's one log line (Django would add a second, "Service Unavailable"), without a stack.
    log_response(
        "database unavailable, answered 503 to %s %s: %s",
        request.method,
        request.path,
        exc,
        response=response,
        request=request,
        logger=logger,
    )
    return response


def server_error(request, template_name="500.html"):
    """handler500: a database error that escaped the middleware below (a session saved on the way out) is a 503."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_ERRORS):
        return database_unavailable(request, exc)
    return defaults.server_error(request, template_name)


class DatabaseOutageMiddleware:
    """A database that does not answer is a 503 with Retry-After, and SkyDeck carries on when it is back.

    The session and the user load lazily, first in LoginRequiredMiddleware's process_view,
    where process_exception cannot see a failure; so they are loaded here, ahead of it. The
    API loads them in its own authentication and answers a failure itself (experiments.api.errors).
    Nothing is kept between requests: Django reconnects on the next query.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if _is_api(request) or getattr(view_func, "login_required", True) is False:
            return None  # the API and the public pages (login, /healthz) answer for themselves
        try:
            request.user.is_authenticated  # noqa: B018 - loads the session and the user
        except DATABASE_ERRORS as exc:
            return database_unavailable(request, exc)
        return None

    def process_exception(self, request, exception):
        if isinstance(exception, DATABASE_ERRORS):
            return database_unavailable(request, exception)
        return None


class RequestBodyLimitMiddleware:
    """A form body over DATA_UPLOAD_MAX_MEMORY_SIZE (or with too many fields) is a clear 413 (400) page.

    The body is read here, ahead of CsrfViewMiddleware, which would read it next; the API
    reads its own bodies and answers in JSON.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.method != "POST" or _is_api(request):
            return None
        try:
            request.POST  # noqa: B018 - parses the body, within the limits
        except BODY_ERRORS as exc:
            return self._refused(request, exc)
        return None

    def process_exception(self, request, exception):
        if isinstance(exception, BODY_ERRORS) and not _is_api(request):
            return self._refused(request, exception)
        return None

    def _refused(self, request, exc):
        if isinstance(exc, RequestDataTooBig):
            status, title = 413, "Request too large"
            message = f"The form sent is too large: SkyDeck takes at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        else:
            status, title = 400, "Bad request"
            message = "The form sent has too many fields."
        response = HttpResponse(
            loader.render_to_string("400.html", {"title": title, "message": message}, request=request), status=status
        )
        log_response("refused %s %s: %s", request.method, request.path, exc, response=response, request=request)
        return response


class LoginRequiredMiddleware(auth_middleware.LoginRequiredMiddleware):
    """Django's login-required default, plus two cases it cannot know about.

    An htmx request from an expired session gets ``HX-Redirect`` so the whole
    browser goes to the login page, instead of a login form being swapped into
    a table cell. The REST API answers for itself (401 JSON), so it is exempt
    here and authenticates every request with a token or the session.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)

    def handle_no_permission(self, request, view_func):
        if getattr(request, "htmx", False):
            login_url = resolve_url(self.get_login_url(view_func))
            target = request.htmx.current_url_abs_path or request.get_full_path()
            response = HttpResponse(status=204)
            response["HX-Redirect"] = redirect_to_login(target, login_url).url
            return response
        return super().handle_no_permission(request, view_func)
