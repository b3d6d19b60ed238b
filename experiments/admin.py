from django import forms
from django.contrib import admin, messages
from django.db import transaction

from .models import ApiToken, DesiredState, Event, Experiment, FlagSchema, Job, Sweep


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
        changed = 0
        with transaction.atomic():
            for experiment in queryset.select_for_update() if transaction.get_connection().features.has_select_for_update else queryset:
                if experiment.set_desired_state(state, user=request.user, source="admin"):
                    changed += 1
        modeladmin.message_user(
            request, f"{changed} experiment(s) set to {state}; {queryset.count() - changed} already were.", messages.SUCCESS
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


class ExperimentAdminForm(forms.ModelForm):
    """Flags are checked and coerced against their schemas by Experiment.clean(), as in the form and the API."""

    class Meta:
        model = Experiment
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "flags" in self.fields and self.instance.pk and self.instance.unknown_flags:
            self.fields["flags"].help_text = "No schema describes: " + ", ".join(self.instance.unknown_flags)


class FlagSchemaAdminForm(forms.ModelForm):
    class Meta:
        model = FlagSchema
        fields = "__all__"

    def clean(self):
        from .flags import _Refused, coerce_value

        cleaned = super().clean()
        kind, choices, default = cleaned.get("type"), cleaned.get("choices"), cleaned.get("default")
        if kind == FlagSchema.Type.CHOICE and not choices:
            self.add_error("choices", "A choice flag needs its list of choices.")
        if choices is not None and not isinstance(choices, list):
            self.add_error("choices", "Choices are a JSON list.")
        elif default is not None and kind and not self.errors:
            try:
                cleaned["default"] = coerce_value(FlagSchema(type=kind, choices=choices or []), default)
            except _Refused as exc:
                self.add_error("default", f"The default {exc}.")
        return cleaned


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    form = ExperimentAdminForm
    list_display = ("name", "phase", "desired_state", "backend", "tag_list", "last_job_status", "starred", "updated_at")
    list_filter = ("desired_state", "phase", "backend", "restart_policy", "starred", "sweep")
    search_fields = ("name", "description", "command")
    actions = [_set_state_action(s) for s in DesiredState.values]
    readonly_fields = (
        "generation", "observed_generation", "run_number", "phase", "status_reason", "status_message",
        "failure_count", "next_attempt_at", "last_reconciled_at", "created_at", "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "description", "command", "flags", "flag_style", "tags", "sweep", "starred")}),
        ("Intent", {"fields": ("desired_state", "backend", "restart_policy", "max_restarts", "managed")}),
        ("Resources", {"fields": ("accelerators", "num_nodes", "cpus", "memory", "infra", "use_spot", "disk_size",
                                  "image_id", "autostop_minutes")}),
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
        desired_changed = change and "desired_state" in form.changed_data
        spec_changed = obj.spec_changed()
        new_state = obj.desired_state
        if desired_changed:
            # Go through set_desired_state so the change is audited and reconciled.
            obj.desired_state = form.initial.get("desired_state", obj.desired_state)
        super().save_model(request, obj, form, change)
        if not change:
            Event.record(obj, Event.Kind.CREATED, "Created in the admin", user=request.user, actor="admin")
            if obj.desired_state == DesiredState.RUNNING:
                obj.run_number += 1
                obj.save(update_fields=["run_number"])
                obj.reconcile_soon()
        elif spec_changed:
            Event.record(obj, Event.Kind.SPEC, f"Spec edited in the admin (generation {obj.generation})", user=request.user, actor="admin")
        if desired_changed:
            obj.set_desired_state(new_state, user=request.user, source="admin")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("name", "experiment", "attempt", "status", "exit_code", "failure_kind", "cluster_name", "created_at", "ended_at")
    list_filter = ("status", "failure_kind", "backend")
    search_fields = ("name", "experiment__name", "cluster_name", "error_message")
    list_select_related = ("experiment",)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "experiment", "kind", "actor", "user", "message")
    list_filter = ("kind", "actor")
    search_fields = ("message", "experiment__name")
    list_select_related = ("experiment", "user")


@admin.register(FlagSchema)
class FlagSchemaAdmin(admin.ModelAdmin):
    form = FlagSchemaAdminForm
    list_display = ("namespace", "path", "type", "default", "required", "source")
    list_filter = ("namespace", "type", "source", "required")
    search_fields = ("path", "description", "namespace")


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base", "max_concurrent", "created_at")
    search_fields = ("name",)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")
    fields = ("user", "name", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at")

    def has_add_permission(self, request):
        return False  # tokens are issued with manage.py create_api_token or from the account page
