def test_home_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_home_lists_experiments(owner_client):
    from tests.factories import ExperimentFactory

    ExperimentFactory(name="visible-one")
    response = owner_client.get("/")
    assert response.status_code == 200
    assert b"visible-one" in response.content
