"""The experiment list's filters: one definition, for the page and the API alike.

The names are the page's URL parameters and the API's query parameters:
``q`` (name, description or command), ``state`` (phase), ``desired``, ``backend``,
``tag``, ``starred``, ``sweep``, ``who`` (``mine`` or ``all``), ``metric`` (a metric's
latest value as a column) and ``sort``. On the
page an invalid value is ignored (a shared URL must still open); the API refuses it
with 422 first.
"""

import django_filters
from django import forms
from django.db.models import F, Q

from clusters.models import Backend

from . import metrics
from .metric_models import METRIC_NAME_MAX
from .models import DesiredState, Experiment, Phase

SORTS = {
    "-created": ("-created_at", "-id"),
    "created": ("created_at", "id"),
    "name": ("name",),
    "-name": ("-name",),
    "-updated": ("-updated_at", "-id"),
    "state": ("phase", "name"),
    "desired": ("desired_state", "name"),
    "backend": ("backend", "name"),
}
SORT_CHOICES = [
    ("-created", "Newest first"),
    ("created", "Oldest first"),
    ("name", "Name A–Z"),
    ("-name", "Name Z–A"),
    ("-updated", "Recently changed"),
    ("state", "State"),
    ("desired", "Desired state"),
    ("backend", "Backend"),
    ("metric", "Metric, lowest first"),
    ("-metric", "Metric, highest first"),
]
# Sorts by the metric column: without a metric chosen they fall back to the default order.
METRIC_SORTS = {"metric": False, "-metric": True}
DEFAULT_SORT = "-created"


class ExperimentFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(
        method="search", label="Search", max_length=200, help_text="Match in the name, description or command"
    )
    state = django_filters.ChoiceFilter(
        field_name="phase", choices=Phase.choices, label="State", empty_label="Any state", help_text="Phase"
    )
    desired = django_filters.ChoiceFilter(
        field_name="desired_state", choices=DesiredState.choices, label="Desired", empty_label="Any desired state"
    )
    backend = django_filters.ChoiceFilter(choices=Backend.choices, label="Backend", empty_label="Any backend")
    tag = django_filters.CharFilter(method="with_tag", label="Tag", max_length=50)
    starred = django_filters.BooleanFilter(
        method="only_starred", label="Starred only", widget=forms.CheckboxInput, help_text="Only starred ones"
    )
    sweep = django_filters.CharFilter(field_name="sweep__name", label="Sweep", max_length=60)
    who = django_filters.ChoiceFilter(
        method="owned",
        choices=[("mine", "Mine"), ("all", "Everyone's")],
        label="Whose",
        empty_label=None,
        help_text="mine: those you own (the page's default when you own any); all: everyone's",
    )
    metric = django_filters.CharFilter(
        method="with_metric_column",
        label="Metric column",
        max_length=METRIC_NAME_MAX,
        help_text="Show this metric's latest value as a column (sort by it with sort=metric or -metric)",
    )
    sort = django_filters.ChoiceFilter(
        method="sort_by", choices=SORT_CHOICES, label="Sort", empty_label=None, help_text="Order of the list"
    )

    class Meta:
        model = Experiment
        fields = []

    # Filters that narrow the list (sort only orders it).
    NARROWING = ("q", "state", "desired", "backend", "tag", "starred", "sweep")

    def owned(self, queryset, name, value):
        user = getattr(self.request, "user", None) if self.request is not None else None
        if value == "mine" and user is not None and user.is_authenticated:
            return queryset.filter(owner=user)
        return queryset

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value) | Q(command__icontains=value))

    def with_tag(self, queryset, name, value):
        return queryset.tagged(value)

    def only_starred(self, queryset, name, value):
        return queryset.filter(starred=True) if value else queryset

    def with_metric_column(self, queryset, name, value):
        return metrics.with_metric(queryset, value)

    def sort_by(self, queryset, name, value):
        return queryset  # applied last, in filter_queryset

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        sort = self.form.cleaned_data.get("sort") or DEFAULT_SORT
        metric = self.form.cleaned_data.get("metric")
        if sort in METRIC_SORTS:
            if not metric:
                return queryset.order_by(*SORTS[DEFAULT_SORT])
            value = F("metric_value")  # annotated by with_metric_column
            order = value.desc(nulls_last=True) if METRIC_SORTS[sort] else value.asc(nulls_last=True)
            return queryset.order_by(order, "name")
        return queryset.order_by(*SORTS.get(sort, SORTS[DEFAULT_SORT]))

    @property
    def qs(self):
        # Unbound (no parameters at all) still gets the default order.
        if not self.is_bound:
            return self.queryset.order_by(*SORTS[DEFAULT_SORT])
        return super().qs

    @property
    def active_count(self):
        """How many narrowing filters are set (valid ones only)."""
        if not self.is_bound:
            return 0
        self.errors  # noqa: B018 - validates the form, filling cleaned_data
        return sum(1 for name in self.NARROWING if self.form.cleaned_data.get(name) not in (None, "", False))
