"""The account's API token page: create (shown once), list, revoke."""

from experiments.models import ApiToken


def test_token_page_needs_login(client, db):
    response = client.get("/account/tokens/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_list_and_revoke_a_token(owner_client, owner, client):
    response = owner_client.post("/account/tokens/", {"name": "laptop"})
    # Post, redirect, get: reloading the page after "Create token" creates nothing more.
    assert response.status_code == 302 and response["Location"] == "/account/tokens/"
    shown = owner_client.get("/account/tokens/")
    key = shown.context["new_key"]
    token = ApiToken.objects.get(user=owner)
    assert token.name == "laptop" and key.encode() in shown.content
    assert token.key_hash == ApiToken.hash(key)
    page = owner_client.get("/account/tokens/")  # the reload
    assert ApiToken.objects.filter(user=owner).count() == 1
    assert token.prefix.encode() in page.content and key.encode() not in page.content
    assert "account_tokens_new_key" not in owner_client.session
    assert owner_client.get(f"/account/tokens/{token.pk}/revoke/").status_code == 405
    owner_client.post(f"/account/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_cannot_revoke_another_users_token(owner_client, other_user):
    token, _ = ApiToken.issue(other_user)
    assert owner_client.post(f"/account/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_every_page_links_to_the_tokens_from_the_account_menu(owner_client, db):
    body = owner_client.get("/").content.decode()
    menu = body[body.index('class="menu user-menu"') :]
    menu = menu[: menu.index("</details>")]
    assert '<a href="/account/tokens/">API tokens</a>' in menu
    assert ">Log out</button>" in menu and "/accounts/password_change/" in menu
