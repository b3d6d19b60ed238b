"""The numbers a job printed: series of (step, value) per job and metric name, and how far its output was read.

Written only by the worker's metrics pass (``experiments.metrics``), read by the pages and
the API. Related models are named by string: ``experiments.models`` imports this module.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

__all__ = ["MetricCursor", "MetricPattern", "MetricPoint", "MetricSeries"]

METRIC_NAME_MAX = 100


class MetricPattern(models.Model):
    """An experiment's own line format: a regular expression whose named groups are metrics."""

    experiment = models.OneToOneField("experiments.Experiment", on_delete=models.CASCADE, related_name="metric_pattern")
    pattern = models.TextField(
        help_text="Named groups are metrics, (?P<step>…) the step; or (?P<name>…) and (?P<value>…) pairs"
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self):
        return f"{self.experiment_id}: {self.pattern}"


class MetricCursor(models.Model):
    """How far a job's output has been read for metrics, by byte offset: nothing is read twice."""

    job = models.OneToOneField("experiments.Job", on_delete=models.CASCADE, related_name="metric_cursor")
    offset = models.BigIntegerField(default=0, help_text="Bytes of the output read so far")
    line = models.BigIntegerField(default=0, help_text="Lines read so far: a line without a step gets its number")
    complete = models.BooleanField(default=False, help_text="The job ended and its whole output was read")
    ignored = models.PositiveIntegerField(default=0, help_text="Values left out: too many series, or not finite")
    error = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["job"], condition=Q(complete=False), name="metric_cursor_incomplete")]

    def __str__(self):
        return f"job {self.job_id} at {self.offset}"


class MetricSeries(models.Model):
    """One metric of one job: what the charts, the sweep comparison and the list column read first."""

    # The unique constraint (job, name) indexes the job.
    job = models.ForeignKey("experiments.Job", on_delete=models.CASCADE, related_name="metric_series", db_index=False)
    # The job's, copied: the list column and the sweep comparison look series up by experiment and attempt.
    experiment = models.ForeignKey(
        "experiments.Experiment", on_delete=models.CASCADE, related_name="metric_series", db_index=False
    )
    attempt = models.PositiveIntegerField()
    name = models.CharField(max_length=METRIC_NAME_MAX)
    points = models.PositiveIntegerField(default=0, help_text="Points stored now")
    first_step = models.BigIntegerField(null=True, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True, help_text="The value at the highest step")
    min_value = models.FloatField(null=True, blank=True, help_text="Over every point read, thinned ones included")
    max_value = models.FloatField(null=True, blank=True)
    thinned = models.PositiveIntegerField(default=0, help_text="Older points dropped to stay under the limit")
    dense_from_step = models.BigIntegerField(
        null=True, blank=True, help_text="Every point from this step on is kept; before it, only some"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["job", "name"]
        constraints = [models.UniqueConstraint(fields=["job", "name"], name="unique_metric_series_per_job")]
        indexes = [
            models.Index(fields=["experiment", "name", "attempt"], name="metric_series_by_experiment"),
            models.Index(fields=["name"], name="metric_series_by_name"),
        ]
        verbose_name_plural = "metric series"

    def __str__(self):
        return f"{self.name} of job {self.job_id}"


class MetricPoint(models.Model):
    """One value of one metric at one step of one job."""

    # The indexes below start with the job: it needs none of its own.
    job = models.ForeignKey("experiments.Job", on_delete=models.CASCADE, related_name="metric_points", db_index=False)
    name = models.CharField(max_length=METRIC_NAME_MAX)
    step = models.BigIntegerField()
    value = models.FloatField()
    time = models.DateTimeField(help_text="When it was printed, if the line says; else when it was read")

    class Meta:
        # A re-read of the output (a restart of the worker, a new pattern) never stores a point twice.
        constraints = [models.UniqueConstraint(fields=["job", "name", "step"], name="unique_metric_point")]
        # A chart that reads on from its cursor (id > since) finds only the new points.
        indexes = [models.Index(fields=["job", "id"], name="metric_point_since")]

    def __str__(self):
        return f"{self.name}@{self.step}={self.value}"
