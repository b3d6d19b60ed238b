"""What every page does the same way: polled fragments, confirmations and safe redirects.

A polled fragment carries a change token: the client sends the token of what it
shows, and when nothing changed the server answers 204, which htmx leaves
alone, so an unchanged table is neither rendered nor sent.
"""

import hashlib
import json

from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from experiments import revision

from .context_processors import warning_keys


def change_token(*parts):
    """A short digest of what a fragment shows."""
    return hashlib.blake2b(json.dumps(parts, default=str, sort_keys=True).encode(), digest_size=12).hexdigest()


def live_token(request, *parts):
    """A polled fragment's token in O(1): the database's change marker, the banner's state and the request's own parts.

    Read before the page's queries, so a change made meanwhile is shown by the next poll,
    never missed. No clock: relative times count on in the browser.
    """
    user = getattr(request, "user", None)
    return change_token(revision.current(), warning_keys(request), getattr(user, "pk", None), parts)


def is_poll(request):
    """An htmx request for a fragment (not a history restore, which wants the whole page)."""
    return bool(getattr(request, "htmx", False)) and not request.htmx.history_restore_request


def unchanged(request, token):
    """The client already shows what ``token`` stands for."""
    return is_poll(request) and request.GET.get("token") == token


def NOT_MODIFIED():  # noqa: N802 - reads as the constant it stands for
    return HttpResponse(status=204)


def page_or_fragment(request, template, fragment, context, *, token=None):
    """The whole page; for a poll, the fragment, or 204 when its token says nothing changed.

    ``token`` may be a callable, so a poll that can answer 204 never builds the page's context.
    """
    if is_poll(request):
        if token is not None and unchanged(request, token):
            return NOT_MODIFIED()
        return render(request, f"{template}#{fragment}", context() if callable(context) else context)
    return render(request, template, context() if callable(context) else context)


def safe_next(request, default):
    """The ``next`` the form asked for, if it stays on this site; else ``default``."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def confirm(request, *, title, message, items=(), action_label, danger=True, cancel_url=None):
    """A confirmation page that posts the same form again with confirmed=1."""
    fields = [
        (k, v) for k, values in request.POST.lists() if k not in {"csrfmiddlewaretoken", "confirmed"} for v in values
    ]
    items = list(items)
    return render(
        request,
        "confirm.html",
        {
            "title": title,
            "message": message,
            "items": items[:50],
            "more": max(0, len(items) - 50),
            "fields": fields,
            "action": request.path,
            "action_label": action_label,
            "danger": danger,
            "cancel_url": cancel_url or safe_next(request, reverse("experiments:list")),
        },
    )
