"""The REST API (django-ninja). Placeholder until the API issue lands: health only."""

from ninja import NinjaAPI

api = NinjaAPI(title="SkyDeck API", version="1", urls_namespace="api")


@api.get("/health")
def health(request):
    return {"status": "ok"}
