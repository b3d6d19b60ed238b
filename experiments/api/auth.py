"""Who is asking: a bearer token, or the dashboard's session with its CSRF token.

Bad tokens are counted per client address in the shared cache: after
SKYDECK_API_TOKEN_FAILURE_LIMIT of them within SKYDECK_API_TOKEN_FAILURE_WINDOW seconds
(from the first), every token from that address is refused with 429 until the window
has passed, so a token cannot be guessed by trying.
"""

import logging
import math
import time
from functools import wraps

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.http import JsonResponse
from ninja.security import APIKeyCookie, HttpBearer
from ninja.utils import check_csrf

from skydeck_site.middleware import client_ip

from .. import intent
from ..models import ApiToken
from ..validators import storable_text
from .errors import ApiError

logger = logging.getLogger(__name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}


def actor(request):
    """The asker, as intent records it: the token's (or session's) user, through the API."""
    return intent.Actor(request.auth, "api")


def _single_query_values(request, user):
    """Every query parameter here is a single value: a repeated one is refused, not silently cut."""
    if user is not None:
        for key in request.GET:
            if len(request.GET.getlist(key)) > 1:
                raise ApiError(422, f"{key}: given more than once; send it once.", key)
    return user


class TokenFailures:
    """Failed tokens from one address in the current window: ``opened`` (a timestamp) and ``count`` keys.

    A cache that does not answer counts nothing and refuses nobody: the API stays up without it.
    """

    def __init__(self, address):
        self.opened_key = f"skydeck:api-token-failures:{address}:opened"
        self.count_key = f"skydeck:api-token-failures:{address}:count"
        self.window = settings.SKYDECK_API_TOKEN_FAILURE_WINDOW

    def retry_after(self):
        """Seconds until this address may try again; 0 when it may now."""
        try:
            state = cache.get_many([self.opened_key, self.count_key])
        except Exception as exc:  # noqa: BLE001 - Redis or the cache folder: any failure means "not counted"
            logger.warning("bad API tokens are not counted: the cache does not answer: %s", exc)
            return 0
        opened, count = state.get(self.opened_key), state.get(self.count_key, 0)
        if opened is None or count < settings.SKYDECK_API_TOKEN_FAILURE_LIMIT:
            return 0
        return max(0, math.ceil(opened + self.window - time.time()))

    def add(self):
        try:
            now = time.time()
            opened = cache.get(self.opened_key)
            if opened is None or now >= opened + self.window:
                cache.set_many({self.opened_key: now, self.count_key: 1}, timeout=self.window)
                return
            try:
                cache.incr(self.count_key)
            except ValueError:  # expired in between
                cache.set(self.count_key, 1, timeout=self.window)
        except Exception as exc:  # noqa: BLE001 - as in retry_after
            logger.warning("a bad API token was not counted: the cache does not answer: %s", exc)


class BearerToken(HttpBearer):
    """``Authorization: Bearer <token>``; tokens come from ``manage.py create_api_token`` or the account page."""

    def authenticate(self, request, token):
        failures = TokenFailures(client_ip(request))
        if wait := failures.retry_after():
            raise ApiError(
                429,
                f"Too many bad tokens from your address; try again in {wait} s.",
                headers={"Retry-After": wait},
            )
        token = token.strip()
        user = ApiToken.authenticate(token) if token and storable_text(token) else None
        if user is None:
            failures.add()
            return None
        return _single_query_values(request, user)


class SessionWithCsrf(APIKeyCookie):
    """The dashboard's session cookie; a request that changes something must carry the CSRF token."""

    param_name = settings.SESSION_COOKIE_NAME

    def _get_key(self, request):
        # CSRF is checked below, only for a logged-in user: without a session the answer is 401, not 403.
        return request.COOKIES.get(self.param_name)

    def authenticate(self, request, key):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return None
        if request.method not in SAFE_METHODS and check_csrf(request):
            raise ApiError(
                403, "CSRF check failed: send the X-CSRFToken header with a session cookie, or use a bearer token."
            )
        return _single_query_values(request, user)


def _refused(status, message, headers=None):
    """The API's error shape (experiments.api.errors), for the docs views, which ninja's handlers do not see."""
    response = JsonResponse({"message": message, "detail": message, "field": None, "errors": []}, status=status)
    for name, value in (headers or {}).items():
        response[name] = str(value)
    return response


def docs_need_a_user(view):
    """/api/docs and /api/openapi.json need a user, like every endpoint: the session or a bearer token.

    A browser without a session is sent to log in; anything else gets the API's 401.
    """
    bearer = BearerToken()

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            try:
                user = bearer(request)
            except ApiError as exc:  # too many bad tokens from this address
                return _refused(exc.status, exc.message, exc.headers)
        if user is None:
            if "text/html" in request.headers.get("Accept", ""):
                return redirect_to_login(request.get_full_path())
            return _refused(
                401,
                "Authentication required: log in, or send Authorization: Bearer <token>.",
                {"WWW-Authenticate": 'Bearer realm="skydeck"'},
            )
        return view(request, *args, **kwargs)

    return wrapped
