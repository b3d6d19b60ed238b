"""/metrics for operators: SkyDeck's state in Prometheus's text format.

Each scrape reads the database (a fixed, small number of queries), so every web
process answers the same whatever process did the work. Only a scraper that sends
``Authorization: Bearer <SKYDECK_PROMETHEUS_TOKEN>``, one whose address is in
``SKYDECK_PROMETHEUS_ALLOW`` (addresses or networks), or a logged-in staff user
may read it; anyone else gets 403. Bad tokens are counted like the API's.
"""

import hmac
import ipaddress

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, Sum
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from clusters.models import BackendHealth, Cluster, ClusterStatus, Heartbeat
from experiments.api.auth import TokenFailures
from experiments.metric_models import MetricSeries
from experiments.models import DesiredState, Experiment, Job, JobStatus, Phase

from .middleware import client_ip

# How often each control loop is meant to run, to say how late it is.
LOOPS = {
    "poll": "SKYDECK_POLL_INTERVAL",
    "reconcile": "SKYDECK_RECONCILE_INTERVAL",
    "logs": "SKYDECK_LOG_SYNC_INTERVAL",
    "metrics": "SKYDECK_METRICS_INTERVAL",
}
DEFAULT_INTERVAL = 5.0


def _interval(loop):
    return float(getattr(settings, LOOPS[loop], DEFAULT_INTERVAL))


class SkyDeckCollector:
    """Gauges read from the database at each scrape."""

    def collect(self):
        now = timezone.now()
        by_phase = dict(Experiment.objects.order_by().values_list("phase").annotate(n=Count("id")))
        experiments = GaugeMetricFamily("skydeck_experiments", "Experiments by phase", labels=["phase"])
        for phase in Phase.values:
            experiments.add_metric([phase], by_phase.get(phase, 0))
        yield experiments

        by_desired = dict(Experiment.objects.order_by().values_list("desired_state").annotate(n=Count("id")))
        desired = GaugeMetricFamily(
            "skydeck_experiments_desired", "Experiments by desired state", labels=["desired_state"]
        )
        for state in DesiredState.values:
            desired.add_metric([state], by_desired.get(state, 0))
        yield desired

        by_status = dict(Job.objects.order_by().values_list("status").annotate(n=Count("id")))
        jobs = GaugeMetricFamily("skydeck_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus.values:
            jobs.add_metric([status], by_status.get(status, 0))
        yield jobs

        beats = {b.name: b for b in Heartbeat.objects.filter(name__in=list(LOOPS))}
        last = GaugeMetricFamily(
            "skydeck_loop_last_run_timestamp_seconds", "When the loop last finished", labels=["loop"]
        )
        duration = GaugeMetricFamily("skydeck_loop_duration_seconds", "How long its last run took", labels=["loop"])
        lateness = GaugeMetricFamily(
            "skydeck_loop_lateness_seconds",
            "Seconds past its interval since the loop last finished (0: on time)",
            labels=["loop"],
        )
        late = GaugeMetricFamily(
            "skydeck_loop_late", "1 when the loop is late (two intervals and 15 s)", labels=["loop"]
        )
        ok = GaugeMetricFamily("skydeck_loop_ok", "1 when its last run went well", labels=["loop"])
        for loop in LOOPS:
            beat, interval = beats.get(loop), _interval(loop)
            if beat is None or beat.finished_at is None:
                late.add_metric([loop], 1)
                continue
            age = (now - beat.finished_at).total_seconds()
            last.add_metric([loop], beat.finished_at.timestamp())
            duration.add_metric([loop], beat.duration or 0.0)
            lateness.add_metric([loop], max(0.0, age - interval))
            late.add_metric([loop], int(beat.is_late(interval)))
            ok.add_metric([loop], int(beat.ok))
        yield from (last, duration, lateness, late, ok)

        reachable = GaugeMetricFamily("skydeck_backend_reachable", "1 when the backend answered", labels=["backend"])
        failures = GaugeMetricFamily(
            "skydeck_backend_consecutive_failures", "Polls in a row it did not answer", labels=["backend"]
        )
        since = GaugeMetricFamily(
            "skydeck_backend_unreachable_since_timestamp_seconds", "Since when it has not answered", labels=["backend"]
        )
        for health in BackendHealth.objects.order_by("backend"):
            reachable.add_metric([health.backend], int(health.reachable))
            failures.add_metric([health.backend], health.consecutive_failures)
            if health.unreachable_since is not None:
                since.add_metric([health.backend], health.unreachable_since.timestamp())
        yield from (reachable, failures, since)

        clusters = GaugeMetricFamily("skydeck_clusters", "Clusters by backend and status", labels=["backend", "status"])
        cost = GaugeMetricFamily(
            "skydeck_clusters_up_hourly_cost_dollars", "What the clusters that are UP cost an hour", labels=["backend"]
        )
        counted = (
            Cluster.objects.order_by().values("backend", "status").annotate(n=Count("id"), cost=Sum("hourly_cost"))
        )
        up_cost = {}
        for row in counted:
            clusters.add_metric([row["backend"], row["status"]], row["n"])
            if row["status"] == ClusterStatus.UP:
                up_cost[row["backend"]] = row["cost"] or 0.0
        for backend, dollars in sorted(up_cost.items()):
            cost.add_metric([backend], dollars)
        yield from (clusters, cost)

        stored = MetricSeries.objects.aggregate(series=Count("id"), points=Sum("points"))
        yield GaugeMetricFamily("skydeck_metric_series", "Metric series stored", value=stored["series"] or 0)
        yield GaugeMetricFamily("skydeck_metric_points", "Metric points stored", value=stored["points"] or 0)


registry = CollectorRegistry(auto_describe=False)
registry.register(SkyDeckCollector())


def _allowed_networks():
    networks = []
    for entry in getattr(settings, "SKYDECK_PROMETHEUS_ALLOW", []) or []:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # the settings refuse a malformed entry at start-up
    return networks


def _address_allowed(request):
    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    return any(address in network for network in _allowed_networks())


def may_scrape(request):
    """A matching bearer token, an allowed address, or a staff session; None, or the refusal's status."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    expected = getattr(settings, "SKYDECK_PROMETHEUS_TOKEN", "")
    if header.lower().startswith("bearer "):
        failures = TokenFailures(client_ip(request))
        if failures.retry_after():
            return 429
        given = header[7:].strip()
        if expected and hmac.compare_digest(given.encode(), expected.encode()):
            return None
        failures.add()
        return 403
    if _address_allowed(request):
        return None
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and (user.is_staff or user.is_superuser):
        return None
    return 403


@login_not_required
@require_safe
@never_cache
def metrics(request):
    refused = may_scrape(request)
    if refused is not None:
        text = "Too many bad tokens; try again later.\n" if refused == 429 else "Forbidden: send the scrape token.\n"
        return HttpResponse(text, status=refused, content_type="text/plain; charset=utf-8")
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
