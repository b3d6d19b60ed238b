from django.contrib import admin
from django.urls import include, path

from experiments import account_views

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("account/tokens/", account_views.tokens, name="account_tokens"),
    path("account/tokens/<int:pk>/revoke/", account_views.revoke_token, name="account_token_revoke"),
    path("api/", include("experiments.api_urls")),
    path("clusters/", include("clusters.urls")),
    path("system/", views.system, name="system"),
    path("", include("experiments.urls")),
]
