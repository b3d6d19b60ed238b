"""manage.py create_api_token: prints a token once; only its hash is stored."""

import io

import pytest
from django.core.management import CommandError, call_command

from experiments.models import ApiToken
from tests.factories import UserFactory


def test_create_api_token_prints_a_working_token(db, client):
    user = UserFactory(username="alice")
    out = io.StringIO()
    call_command("create_api_token", "alice", "--name", "laptop", stdout=out, stderr=io.StringIO())
    key = out.getvalue().strip()
    token = ApiToken.objects.get(user=user)
    assert token.name == "laptop" and key.startswith(token.prefix)
    assert key not in token.key_hash and token.key_hash == ApiToken.hash(key)
    assert client.get("/api/experiments", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_create_api_token_for_an_unknown_user_fails(db):
    with pytest.raises(CommandError, match="No user"):
        call_command("create_api_token", "nobody")
    assert not ApiToken.objects.exists()
