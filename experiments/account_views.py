"""The user's own things: API tokens (shown once, last used, revoked) and notifications
(subscriptions, a test message, what was sent)."""

import re

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from skydeck_site.htmx import confirm

from . import intent, notify
from .forms import SubscriptionForm
from .models import DEFAULT_TOPICS, ApiToken, Experiment, Notification, Subscription, Sweep, Topic

# The new key waits here, in the user's own session, only until the page after the redirect shows it.
NEW_KEY = "account_tokens_new_key"


def tokens(request):
    """Post, redirect, get: a reload after "Create token" shows the page again and creates nothing."""
    if request.method == "POST":
        name = (request.POST.get("name") or "").strip()[:100]
        token, key = ApiToken.issue(request.user, name=name)
        request.session[NEW_KEY] = {"pk": token.pk, "key": key}
        return redirect("account_tokens")
    new = request.session.pop(NEW_KEY, None)
    return render(
        request,
        "account/tokens.html",
        {
            "tokens": request.user.api_tokens.order_by("-created_at"),
            "new_key": new["key"] if new else None,
            "new_pk": new["pk"] if new else None,
        },
    )


@require_POST
def revoke_token(request, pk):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if token.revoked_at is None:
        token.revoke()
        messages.success(request, f"Revoked token {token.prefix}…; scripts using it now get 401.")
    return redirect("account_tokens")


# --- notifications ---------------------------------------------------------------------------------

HISTORY = 30
# apprise's own log lines start with a time and a level: the user wants only what went wrong.
LOG_PREFIX = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - [A-Z]+ - ")
# What "Notify me" subscribes to: an experiment's successes matter; a sweep's would be one per child.
NOTIFY_ME_TOPICS = {"experiment": [*DEFAULT_TOPICS, Topic.SUCCEEDED], "sweep": list(DEFAULT_TOPICS)}


def notifications(request):
    """The user's subscriptions, a form to add one, and what was sent lately (post, redirect, get)."""
    initial = {}
    for scope in ("experiment", "sweep"):
        if request.GET.get(scope):
            initial.update(scope=scope, **{scope: request.GET[scope]})
    form = SubscriptionForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            subscription, created = intent.subscribe(
                intent.Actor.of(request),
                target=data["target"],
                topics=data["topics"],
                experiment=data["experiment_obj"],
                sweep=data["sweep_obj"],
            )
        except ValidationError as exc:
            for error in exc.messages:
                form.add_error(None, error)
        else:
            if created:
                messages.success(request, f"Subscribed {subscription.display_target} to {subscription.scope}.")
            else:
                messages.info(request, f"{subscription.display_target} is already told about {subscription.scope}.")
            return redirect("account_notifications")
    subscriptions = (
        Subscription.objects.filter(user=request.user)
        .select_related("experiment", "sweep")
        .annotate(sent=Count("notifications", filter=Q(notifications__status=Notification.Status.SENT)))
        .order_by("-created_at", "-id")
    )
    labels = dict(Topic.choices)
    subscriptions = list(subscriptions)
    for subscription in subscriptions:
        subscription.topic_labels = [labels.get(t, t) for t in subscription.topics or []]
    history = (
        Notification.objects.filter(subscription__user=request.user)
        .select_related("subscription", "event", "event__experiment")
        .order_by("-created_at", "-id")[:HISTORY]
    )
    return render(
        request,
        "account/notifications.html",
        {
            "form": form,
            "subscriptions": subscriptions,
            "history": history,
            "email_configured": settings.SKYDECK_EMAIL_CONFIGURED,
        },
    )


def _own_subscription(request, pk):
    # Someone else's subscription is not found: only its user sees it.
    return get_object_or_404(Subscription.objects.select_related("experiment", "sweep"), pk=pk, user=request.user)


@require_POST
def subscription_delete(request, pk):
    subscription = _own_subscription(request, pk)
    if not request.POST.get("confirmed"):
        sent = subscription.notifications.count()
        return confirm(
            request,
            title=f"Stop telling {subscription.display_target}?",
            message=f"About {subscription.scope}. "
            + (f"Its delivery history ({sent} notification{'s' if sent != 1 else ''}) goes with it." if sent else ""),
            action_label="Delete subscription",
            cancel_url=reverse("account_notifications"),
        )
    intent.unsubscribe(intent.Actor.of(request), subscription)
    messages.success(request, f"{subscription.display_target} is no longer told about {subscription.scope}.")
    return redirect("account_notifications")


@require_POST
def subscription_test(request, pk):
    """Send a test now and say whether it went (the user waits for the answer)."""
    subscription = _own_subscription(request, pk)
    try:
        notify.send_test(subscription)
    except notify.DeliveryFailed as exc:
        messages.error(request, f"The test was not sent: {LOG_PREFIX.sub('', str(exc))}")
    else:
        messages.success(request, f"Sent a test to {subscription.display_target}: check that it arrived.")
    return redirect("account_notifications")


def _notify_me(request, scope, thing):
    """Subscribe the user to one experiment or sweep, at the address they used last (or their email)."""
    mine = Subscription.objects.filter(user=request.user)
    if mine.filter(**{scope: thing}).exists():
        messages.info(request, f"You are already told about {scope} {thing.name}.")
        return redirect(thing)
    last = mine.order_by("-created_at", "-id").values_list("target", flat=True).first()
    target = last or (request.user.email if settings.SKYDECK_EMAIL_CONFIGURED else "")
    if not target:
        messages.info(request, f"Say where to send notifications about {scope} {thing.name}: an address or a URL.")
        return redirect(f"{reverse('account_notifications')}?{scope}={thing.name}#add")
    try:
        subscription, _ = intent.subscribe(
            intent.Actor.of(request), target=target, topics=NOTIFY_ME_TOPICS[scope], **{scope: thing}
        )
    except ValidationError as exc:
        messages.error(request, f"Not subscribed: {'; '.join(exc.messages)}")
        return redirect(f"{reverse('account_notifications')}?{scope}={thing.name}#add")
    messages.success(
        request,
        f"You will be told about {scope} {thing.name} at {subscription.display_target} "
        f"({', '.join(Topic(t).label.lower() for t in subscription.topics)}). Change it in Notifications.",
    )
    return redirect(thing)


@require_POST
def notify_me_experiment(request, name):
    return _notify_me(request, "experiment", get_object_or_404(Experiment, name=name))


@require_POST
def notify_me_sweep(request, name):
    return _notify_me(request, "sweep", get_object_or_404(Sweep, name=name))
