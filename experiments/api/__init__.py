"""The REST API (django-ninja), under /api/.

Paths follow the prototype's, so scripts written for it carry over. Every
endpoint needs a user: a bearer token (``Authorization: Bearer <token>``) or
the dashboard's session cookie with its CSRF token. Every change goes through
``experiments.intent``, as the dashboard's do. Errors are JSON with a
``message`` and, for validation, the ``field``; bad input is never a 500.
"""

from ninja import NinjaAPI

from . import clusters, errors, experiments, flag_schemas, jobs, subscriptions, sweeps, system
from .auth import BearerToken, SessionWithCsrf, docs_need_a_user


class SkyDeckApi(NinjaAPI):
    def get_openapi_operation_id(self, operation):
        # The ids the API had before it was split into routers, so generated clients keep their method names.
        return f"experiments_api_{operation.view_func.__name__}"


api = SkyDeckApi(
    title="SkyDeck API",
    version="1",
    description=(
        "Declarative SkyPilot experiments. Authenticate with `Authorization: Bearer <token>` "
        "(create one with `manage.py create_api_token USERNAME` or on your account's token page)."
    ),
    urls_namespace="api",
    auth=[BearerToken(), SessionWithCsrf()],
    openapi_url="/openapi.json",
    docs_url="/docs",
    # The schema and the docs need a user too; the docs load ninja's own copy of Swagger UI (no CDN).
    docs_decorator=docs_need_a_user,
)
errors.install(api)

api.add_router("", "experiments.api.files.router")  # first: /experiments/import must not be taken for an {id}
api.add_router("/experiments", experiments.router)
api.add_router("/jobs", jobs.router)
api.add_router("/clusters", clusters.router)
api.add_router("/sweeps", sweeps.router)
api.add_router("/flag-schemas", flag_schemas.router)
api.add_router("/subscriptions", subscriptions.router)
api.add_router("", system.router)
api.add_router("", "experiments.api.metrics.router")
