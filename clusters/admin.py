from django.contrib import admin

from .models import BackendHealth, Cluster, Heartbeat


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "status", "resources", "infra", "hourly_cost", "last_seen_at")
    list_filter = ("backend", "status")
    search_fields = ("name", "infra", "resources")

    def has_change_permission(self, request, obj=None):
        return False  # written by the poller


@admin.register(BackendHealth)
class BackendHealthAdmin(admin.ModelAdmin):
    list_display = ("backend", "reachable", "unreachable_since", "last_ok_at", "last_calls", "last_error")


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ("name", "finished_at", "duration", "ok", "summary")
