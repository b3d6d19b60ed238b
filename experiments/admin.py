"""The admin: bulk edits of experiments through the same intent changes as the pages, history read-only."""

from django import forms
from django.contrib import admin, messages

from . import intent
from .models import (
    ApiToken,
    DesiredState,
    Event,
    Experiment,
    FailureRule,
    FlagSchema,
    Job,
    Notification,
    Subscription,
    Sweep,
)
from .validators import FlagValueError, coerce_flag


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is written by SkyDeck itself; the admin only shows it."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _set_state_action(state):
    def action(modeladmin, request, queryset):
        experiments = list(queryset)
        changed = intent.set_desired_state_many(intent.Actor.of(request, "admin"), experiments, state)
        modeladmin.message_user(
            request,
            f"{changed} experiment(s) set to {state}; {len(experiments) - changed} already were.",
            messages.SUCCESS,
        )

    action.__name__ = f"set_{state.lower()}"
    action.short_description = f"Set desired state to {state}"
    return action


class JobInline(admin.TabularInline):
    model = Job
    fields = ("attempt", "status", "exit_code", "failure_kind", "cluster_name", "sky_job_id", "started_at", "ended_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("-attempt",)

    def has_add_permission(self, request, obj=None):
        return False


STATUS_FIELDS = (
    "generation", "observed_generation", "run_number", "phase", "status_reason", "status_message",
    "failure_count", "next_attempt_at", "last_reconciled_at", "created_by", "created_at", "updated_at",
)  # fmt: skip


class ExperimentAdminForm(forms.ModelForm):
    """Flags are checked and coerced against their schemas by Experiment.clean(), as in the form and the API."""

    class Meta:
        model = Experiment
        fields = ("name", "desired_state", *intent.EDITABLE_FIELDS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "flags" in self.fields and self.instance.pk and self.instance.unknown_flags:
            self.fields["flags"].help_text = "No schema describes: " + ", ".join(self.instance.unknown_flags)
        if self.instance.pk and "name" in self.fields:
            self.fields["name"].disabled = True  # it names the cluster and the jobs


class FlagSchemaAdminForm(forms.ModelForm):
    class Meta:
        model = FlagSchema
        fields = ("namespace", "path", "type", "type_name", "default", "choices", "description", "required", "source")

    def clean(self):
        cleaned = super().clean()
        kind, choices, default = cleaned.get("type"), cleaned.get("choices"), cleaned.get("default")
        if kind == FlagSchema.Type.CHOICE and not choices:
            self.add_error("choices", "A choice flag needs its list of choices.")
        if choices is not None and not isinstance(choices, list):
            self.add_error("choices", "Choices are a JSON list.")
        elif default is not None and kind and not self.errors:
            try:
                cleaned["default"] = coerce_flag(kind, default, choices or ())
            except FlagValueError as exc:
                self.add_error("default", f"The default {exc}.")
        return cleaned


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentAdminForm
    list_display = ("name", "phase", "desired_state", "backend", "tag_list", "last_job_status", "starred", "updated_at")
    list_filter = ("desired_state", "phase", "backend", "restart_policy", "starred", "sweep")
    search_fields = ("name", "description", "command")
    actions = [_set_state_action(s) for s in DesiredState.values]
    readonly_fields = STATUS_FIELDS
    fieldsets = (
        (None, {"fields": ("name", "description", "command", "flags", "flag_style", "tags", "sweep", "starred")}),
        ("Intent", {"fields": ("desired_state", "backend", "restart_policy", "max_restarts", "managed")}),
        (
            "Resources",
            {
                "fields": (
                    "accelerators",
                    "num_nodes",
                    "cpus",
                    "memory",
                    "infra",
                    "use_spot",
                    "disk_size",
                    "image_id",
                    "autostop_minutes",
                )
            },
        ),
        ("Environment", {"fields": ("setup", "envs", "workdir")}),
        # Written only by the reconciler and poller.
        ("Status", {"fields": readonly_fields}),
    )
    inlines = [JobInline]
    list_per_page = 100

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("jobs")

    @admin.display(description="Tags")
    def tag_list(self, obj):
        return ", ".join(obj.tags or [])

    @admin.display(description="Last job")
    def last_job_status(self, obj):
        job = obj.last_job
        return f"#{job.attempt} {job.status}" if job else "—"

    def save_model(self, request, obj, form, change):
        """Create and edit through ``intent``, as every other surface does."""
        actor = intent.Actor.of(request, "admin")
        if not change:
            desired = obj.desired_state
            intent.create(actor, obj, desired_state=desired, message="Created in the admin")
            return
        changes = {f: form.cleaned_data[f] for f in form.changed_data if f in intent.EDITABLE_FIELDS}
        if "desired_state" in form.changed_data:
            changes["desired_state"] = form.cleaned_data["desired_state"]
        intent.edit(actor, obj, changes)

    def delete_model(self, request, obj):
        self._delete(request, [obj])

    def delete_queryset(self, request, queryset):
        self._delete(request, list(queryset))

    def _delete(self, request, experiments):
        _, kept = intent.delete(intent.Actor.of(request, "admin"), experiments)
        if kept:
            self.message_user(
                request, f"Kept {', '.join(kept)}: a job is still active. Stop it first.", messages.WARNING
            )


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "experiment",
        "attempt",
        "status",
        "exit_code",
        "failure_kind",
        "cluster_name",
        "created_at",
        "ended_at",
    )
    list_filter = ("status", "failure_kind", "backend")
    search_fields = ("name", "experiment__name", "cluster_name", "error_message")
    list_select_related = ("experiment",)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "experiment", "kind", "actor", "user", "visible_message")
    list_filter = ("kind", "actor")
    search_fields = ("message", "experiment__name")
    list_select_related = ("experiment", "user")
    fields = ("created_at", "experiment", "job", "user", "actor", "kind", "visible_message", "data")
    readonly_fields = fields

    @admin.display(description="Message", ordering="message")
    def visible_message(self, obj):
        """Flag values can carry terminal escapes or bidi overrides: shown as ``\\x1b``, never sent raw."""
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in obj.message)


@admin.register(FlagSchema)
class FlagSchemaAdmin(admin.ModelAdmin):
    form = FlagSchemaAdminForm
    list_display = ("namespace", "path", "type", "default", "required", "source")
    list_filter = ("namespace", "type", "source", "required")
    search_fields = ("path", "description", "namespace")


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base", "max_concurrent", "max_cost", "limit_action", "created_at")
    search_fields = ("name",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
    fields = ("user", "name", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at")

    def has_add_permission(self, request):
        return False  # tokens are issued with manage.py create_api_token or from the account page


@admin.register(FailureRule)
class FailureRuleAdmin(admin.ModelAdmin):
    """How a failed job is named and whose fault it is: the first enabled rule that matches, lowest position first."""

    list_display = ("reason", "position", "enabled", "kind", "exit_codes", "short_pattern")
    list_display_links = ("reason",)
    list_editable = ("position", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("reason", "pattern", "description")
    ordering = ("position", "id")
    fields = ("reason", "kind", "exit_codes", "pattern", "description", "position", "enabled")

    @admin.display(description="Pattern", ordering="pattern")
    def short_pattern(self, obj):
        return obj.pattern if len(obj.pattern) <= 80 else obj.pattern[:79] + "…"


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Staff may switch a subscription off; its target (which may hold a token) is shown without its secrets."""

    list_display = ("user", "display_target", "scope", "topics", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("user__username", "experiment__name", "sweep__name")
    list_select_related = ("user", "experiment", "sweep")
    fields = ("user", "display_target", "experiment", "sweep", "topics", "enabled", "created_at")
    readonly_fields = ("user", "display_target", "experiment", "sweep", "topics", "created_at")

    def has_add_permission(self, request):
        return False  # each user subscribes on their Notifications page or through the API


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "subscription", "event", "status", "attempts", "sent_at")
    list_filter = ("status",)
    search_fields = ("last_error", "event__message", "subscription__user__username")
    list_select_related = ("subscription__user", "subscription__experiment", "subscription__sweep", "event")
    fields = ("created_at", "subscription", "event", "status", "attempts", "sent_at", "last_error")
    readonly_fields = fields
