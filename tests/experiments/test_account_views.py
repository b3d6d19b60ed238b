"""The account's API token page: create (shown once), list, revoke."""

from experiments.models import ApiToken


def test_token_page_needs_login(client, db):
    response = client.get("/account/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_list_and_revoke_a_token(owner_client, owner, client):
    response = owner_client.post("/account/tokens/", {"name": "laptop"})
    assert response.status_code == 201
    key = response.context["new_key"]
    token = ApiToken.objects.get(user=owner)
    assert token.name == "laptop" and key.encode() in response.content
    page = owner_client.get("/account/tokens/")
    assert token.prefix.encode() in page.content and key.encode() not in page.content
    assert owner_client.get(f"/account/tokens/{token.pk}/revoke/").status_code == 405
    owner_client.post(f"/account/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_cannot_revoke_another_users_token(owner_client, other_user):
    token, _ = ApiToken.issue(other_user)
    assert owner_client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
