"""Every error is JSON of one shape: ``{"message", "detail", "field", "errors": [{"field", "message"}]}``.

``detail`` repeats ``message`` for clients of the prototype. Bad input is a 4xx
that says what is wrong, never a 500 and never an HTML page.
"""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, InterfaceError, OperationalError
from django.http import Http404
from django.utils.log import log_response
from ninja import Field, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from ..validators import storable_text

logger = logging.getLogger(__name__)

MAX_ID_DIGITS = 18  # a larger number is no row's id, and would overflow the column


class ApiError(Exception):
    def __init__(self, status, message, field=None, errors=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.errors = errors or ([{"field": field, "message": message}] if field else [])
        self.headers = headers or {}


class FieldErrorOut(Schema):
    field: str | None = None
    message: str


class ErrorOut(Schema):
    message: str
    detail: str = Field(description="The same as message, for clients of the prototype")
    field: str | None = Field(None, description="The field at fault, when one is")
    errors: list[FieldErrorOut] = []


# 429: too many bad tokens from one address (experiments.api.auth).
# 503: the database (any request) or the broker (refresh, reconcile) did not answer.
ERRORS = dict.fromkeys((400, 401, 403, 404, 409, 422, 429, 503), ErrorOut)


def responses(ok, code=200, *more):
    """An operation's answers: ``ok`` under ``code``, the errors above, and ``more`` (413 where a body is read)."""
    return {code: ok, **ERRORS, **dict.fromkeys(more, ErrorOut)}


def find(queryset, ref, what, name_ok=None):
    """A row by numeric id or by name (``{id}`` in a path takes either); 404 otherwise."""
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_ID_DIGITS:
        found = queryset.filter(pk=int(ref)).first()
        if found is not None:
            return found
    if storable_text(ref) and len(ref) <= 200 and (name_ok is None or name_ok(ref)):
        found = queryset.filter(name=ref).first()
        if found is not None:
            return found
    raise ApiError(404, f"No {what} {ref!r}.")


# --- from an exception to its answer ----------------------------------------------------------


def _field_of(loc):
    parts = [str(p) for p in loc]
    # ninja puts the source (body, query, path) and the parameter's name before the field.
    if parts and parts[0] in {"body", "query", "path", "header", "cookie", "form"}:
        parts = parts[1:]
        if parts and parts[0] in {"payload", "params", "filters"}:
            parts = parts[1:]
    return ".".join(parts) or None


def _first(errors, fallback):
    return errors[0] if errors else {"field": None, "message": fallback}


def install(api):
    """Register the handlers that turn exceptions into the error shape."""

    def answer(request, status, message, field=None, errors=None, headers=None):
        body = {"message": message, "detail": message, "field": field, "errors": errors or []}
        response = api.create_response(request, body, status=status)
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="skydeck"'
        for name, value in (headers or {}).items():
            response[name] = str(value)
        return response

    @api.exception_handler(ApiError)
    def refused(request, exc):
        return answer(request, exc.status, exc.message, exc.field, exc.errors, exc.headers)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request, exc):
        return answer(request, 401, "Authentication required: send Authorization: Bearer <token>.")

    @api.exception_handler(HttpError)
    def http_error(request, exc):
        return answer(request, exc.status_code, str(exc))

    @api.exception_handler(Http404)
    def not_found(request, exc):
        return answer(request, 404, str(exc) or "Not found.")

    @api.exception_handler(PermissionDenied)
    def forbidden(request, exc):
        return answer(request, 403, str(exc) or "You may not do this.")

    @api.exception_handler(NinjaValidationError)
    def invalid_request(request, exc):
        errors = [
            {"field": _field_of(e.get("loc", ())), "message": str(e.get("msg", "is not valid"))} for e in exc.errors
        ]
        first = _first(errors, "The request is not valid.")
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return answer(request, 422, message, first["field"], errors)

    @api.exception_handler(DjangoValidationError)
    def invalid_change(request, exc):
        """Refused by the model or by intent: 400, or 409 when a unique name is taken."""
        if hasattr(exc, "error_dict"):
            pairs = [(None if key == "__all__" else key, e) for key, errs in exc.error_dict.items() for e in errs]
        else:
            pairs = [(None, e) for e in exc.error_list]
        errors = [{"field": key, "message": message} for key, e in pairs for message in e.messages]
        first = _first(errors, "Refused.")
        status = 409 if any(e.code == "unique" for _, e in pairs) else 400
        return answer(request, status, first["message"], first["field"], errors)

    @api.exception_handler(IntegrityError)
    def conflict(request, exc):
        return answer(request, 409, "Something with the same name was written at the same time; try again.")

    @api.exception_handler(OperationalError)
    @api.exception_handler(InterfaceError)
    def database_down(request, exc):
        response = answer(
            request,
            503,
            "SkyDeck cannot reach its database; it retries by itself. Try again in a moment.",
            headers={"Retry-After": settings.SKYDECK_DATABASE_RETRY_AFTER},
        )
        # The response's one log line, not a stack per request for as long as the outage lasts.
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

    @api.exception_handler(RequestDataTooBig)
    def too_big(request, exc):
        return answer(request, 413, f"The request body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")

    @api.exception_handler(TooManyFieldsSent)
    def too_many_fields(request, exc):
        return answer(request, 400, "The request has too many parameters.")
