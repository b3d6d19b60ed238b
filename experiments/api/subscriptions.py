"""/api/subscriptions: the asker's own notifications (only its user sees or ends a subscription)."""

from ninja import Field, ModelSchema, Router, Status
from ninja.pagination import paginate

from .. import intent
from ..models import DEFAULT_TOPICS, Subscription, Topic
from .auth import actor
from .errors import MAX_ID_DIGITS, ApiError, responses
from .experiments import get_experiment
from .pagination import Page
from .schemas import FromModel, In, Text, choice_of
from .sweeps import get_sweep

router = Router(tags=["notifications"])

TopicName = choice_of(Topic)


class SubscriptionIn(In):
    target: Text = Field(
        max_length=1000,
        description="An email address (where email is configured), or a notification URL apprise understands: "
        "slack://…, discord://…, json://host/path (a JSON webhook), mailto://…",
    )
    topics: list[TopicName] = Field(
        default_factory=lambda: [t.value for t in DEFAULT_TOPICS],
        min_length=1,
        description="Which events; the usual ones if left out",
    )
    experiment: Text | None = Field(None, description="One experiment (id or name); neither: all the asker owns")
    sweep: Text | None = Field(None, description="One sweep (id or name)")


class SubscriptionOut(ModelSchema, FromModel):
    target: str = Field(description="Where it is sent, without the secrets in a URL (tokens, passwords)")
    experiment: str | None = Field(description="The experiment's name, for one experiment")
    sweep: str | None = Field(description="The sweep's name, for one sweep")
    scope: str = Field(description="What it is about, in words")

    class Meta:
        model = Subscription
        fields = ["id", "target", "topics", "experiment", "sweep", "enabled", "created_at"]

    @staticmethod
    def resolve_target(subscription):
        return subscription.display_target

    @staticmethod
    def resolve_experiment(subscription):
        return subscription.experiment.name if subscription.experiment_id else None

    @staticmethod
    def resolve_sweep(subscription):
        return subscription.sweep.name if subscription.sweep_id else None


def own(request):
    return Subscription.objects.filter(user=request.auth).select_related("experiment", "sweep")


def get_own(request, ref):
    """One of the asker's subscriptions by id; 404 for anyone else's, as for none."""
    found = None
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_ID_DIGITS:
        found = own(request).filter(pk=int(ref)).first()
    if found is None:
        raise ApiError(404, f"No subscription {ref!r}.")
    return found


def _scope(payload):
    if payload.experiment is not None and payload.sweep is not None:
        raise ApiError(422, "One experiment or one sweep, not both.", "sweep")
    try:
        if payload.experiment is not None:
            return {"experiment": get_experiment(payload.experiment)}
        if payload.sweep is not None:
            return {"sweep": get_sweep(payload.sweep)}
    except ApiError as exc:
        raise ApiError(422, exc.message, "experiment" if payload.experiment is not None else "sweep") from None
    return {}


@router.get("", response=responses(list[SubscriptionOut]))
@paginate(Page)
def list_subscriptions(request):
    """The asker's subscriptions, newest first."""
    return own(request).order_by("-created_at", "-id")


@router.post("", response={**responses(SubscriptionOut, 201, 413), 200: SubscriptionOut})
def create_subscription(request, payload: SubscriptionIn):
    """Be told about events of one experiment, one sweep, or all the asker owns.

    201 with the new subscription; 200 with the one there was, when the same target already has that scope.
    """
    subscription, created = intent.subscribe(
        actor(request), target=payload.target, topics=list(dict.fromkeys(payload.topics)), **_scope(payload)
    )
    return Status(201 if created else 200, subscription)


@router.get("/{id}", response=responses(SubscriptionOut))
def get_subscription(request, id: str):
    """One of the asker's subscriptions; 404 for anyone else's."""
    return get_own(request, id)


@router.delete("/{id}", response=responses(None, 204))
def delete_subscription(request, id: str):
    """End one of the asker's subscriptions (its delivery history goes with it); 404 for anyone else's."""
    intent.unsubscribe(actor(request), get_own(request, id))
    return Status(204, None)
