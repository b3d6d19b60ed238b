"""The user's API tokens: create one (shown once), see when each was last used, revoke."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .models import ApiToken


def tokens(request):
    new_key = None
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip()[:100]
        token, new_key = ApiToken.issue(request.user, name=name)
        # Rendered, not redirected: the key must never sit in a message cookie or the session.
    return render(
        request,
        "account/tokens.html",
        {"tokens": request.user.api_tokens.order_by("-created_at"), "new_key": new_key},
        status=201 if new_key else 200,
    )


@require_POST
def revoke_token(request, pk):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if token.revoked_at is None:
        token.revoke()
        messages.success(request, f"Revoked token {token.prefix}…; scripts using it now get 401.")
    return redirect("account_tokens")
