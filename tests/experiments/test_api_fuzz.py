"""A property-based fuzz of the REST API, driven by its own OpenAPI schema.

Schemathesis generates requests (valid and invalid) for every operation and
checks that none is answered with a 500, and that every answer matches the
status codes, content types and response schemas the API declares.
"""

import json
import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from experiments.models import ApiToken
from tests.factories import ExperimentFactory, JobFactory, SweepFactory, UserFactory

# What the API promises: no 500, and every answer as declared. Schemathesis's
# negative-data check is left out: it counts a lenient but harmless answer (a
# query string it calls invalid that the API reads without complaint) as a
# failure, and which of its generated cases hit that varies from run to run.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _load_schema():
    """The schema /api/openapi.json serves, read from the API itself: serving it needs a user, and none exists yet."""
    from ninja.responses import NinjaJSONEncoder

    from experiments.api import api
    from skydeck_site.wsgi import application

    loaded = schemathesis.openapi.from_dict(json.loads(json.dumps(api.get_openapi_schema(), cls=NinjaJSONEncoder)))
    loaded.app = application
    return loaded


schema = _load_schema()


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    # Like Django's test client: a request must not close the test's connection (and its transaction).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def token(db, tmp_path, settings):
    settings.SKYDECK_LOCAL_ROOT = tmp_path / "local"
    user = UserFactory(username="fuzzer")
    # Something for the generated ids and names to find.
    base = ExperimentFactory(name="exp-one", flags={"lr": 0.1})
    JobFactory(experiment=base, attempt=1, status="SUCCEEDED")
    SweepFactory(name="sweep-one", base=base)
    return ApiToken.issue(user)[1]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("SKYDECK_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_answers_every_request_as_declared(case, token):
    case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
