"""/healthz, for load balancers: does this web process reach its database and its broker?

It asks both for real and answers two booleans, nothing else (no versions, counts or error
text): it needs no login, so anyone can read it.
"""

import logging
import os

from celery import current_app
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.utils.log import log_response
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

BROKER_TIMEOUT = 2  # seconds: a probe must answer before the load balancer gives up on it


def database_problem():
    """None when the database answers SELECT 1; otherwise what went wrong, for the log."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return None if cursor.fetchone() == (1,) else "SELECT 1 gave something else"
    except DatabaseError as exc:
        return str(exc) or type(exc).__name__


def broker_problem():
    """None when the broker the app sends tasks to takes a connection (the filesystem one: its queue folder)."""
    try:
        with current_app.connection_for_write(connect_timeout=BROKER_TIMEOUT) as conn:
            conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT)
            if conn.transport_cls == "filesystem":
                folder = conn.transport_options.get("data_folder_in", "")
                if not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                    return f"the queue folder {folder!r} is missing or not writable"
    except Exception as exc:  # noqa: BLE001 - whatever the transport raises, the broker is not there
        return str(exc) or type(exc).__name__
    return None


@login_not_required
@require_safe
@never_cache
def healthz(request):
    problems = {"database": database_problem(), "broker": broker_problem()}
    ok = not any(problems.values())
    response = JsonResponse(
        {"status": "ok" if ok else "unavailable", **{part: problem is None for part, problem in problems.items()}},
        status=200 if ok else 503,
    )
    if not ok:
        # One line a probe, with the reasons the answer leaves out.
        reasons = "; ".join(f"{part}: {problem}" for part, problem in problems.items() if problem)
        log_response("health: answered 503: %s", reasons, response=response, request=request, logger=logger)
    return response
