from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from experiments import account_views

from . import health, prometheus, views


def account_urls(password_reset):
    """Log in, log out and password change; password reset mails a link, so only with email configured."""
    urls = [
        path("login/", auth_views.LoginView.as_view(), name="login"),
        path("logout/", auth_views.LogoutView.as_view(), name="logout"),
        path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
        path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    ]
    if password_reset:
        urls += [
            path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
            path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
            path(
                "reset/<uidb64>/<token>/",
                auth_views.PasswordResetConfirmView.as_view(),
                name="password_reset_confirm",
            ),
            path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
        ]
    return urls


urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urls(settings.SKYDECK_PASSWORD_RESET))),
    path("account/tokens/", account_views.tokens, name="account_tokens"),
    path("account/tokens/<int:pk>/revoke/", account_views.revoke_token, name="account_token_revoke"),
    path("account/notifications/", account_views.notifications, name="account_notifications"),
    path(
        "account/notifications/<int:pk>/delete/", account_views.subscription_delete, name="account_subscription_delete"
    ),
    path("account/notifications/<int:pk>/test/", account_views.subscription_test, name="account_subscription_test"),
    path(
        "account/notifications/experiment/<slug:name>/",
        account_views.notify_me_experiment,
        name="notify_me_experiment",
    ),
    path("account/notifications/sweep/<slug:name>/", account_views.notify_me_sweep, name="notify_me_sweep"),
    path("api/", include("experiments.api_urls")),
    path("clusters/", include("experiments.cluster_urls")),
    path("system/", views.system, name="system"),
    path("metrics", prometheus.metrics, name="prometheus"),
    path("", include("experiments.metric_urls")),
    path("", include("experiments.file_urls")),  # before experiments.urls: /experiments/import/ is a page
    path("", include("experiments.urls")),
]

# A database error that escapes the middleware is a 503, like every other (skydeck_site.middleware).
handler500 = "skydeck_site.middleware.server_error"
