"""Scalars from a job's output: the line formats, the parser, storage and downsampling.

A program reports numbers by printing lines (docs/metrics.md):

* ``SKYDECK {"step": 100, "loss": 0.42}`` - the marker, then one JSON object on the line.
  Numbers are metrics (nested objects as ``train/loss``), ``step`` (or ``_step``) is the step,
  ``_timestamp`` (Unix seconds) when it was measured.
* ``step=100 loss=0.42 lr=1e-3`` - a line made only of ``key=number`` pairs (separated by
  spaces, commas, ``;`` or ``|``). ``SKYDECK step=100 loss=0.42`` works too.
* The experiment's own regular expression (``MetricPattern``): its named groups are
  metrics, ``(?P<step>...)`` the step; or ``(?P<name>...)``/``(?P<value>...)`` pairs,
  found as often as they occur on a line.

A line is looked at without terminal colours and without SkyPilot's ``(task, pid=...)``
prefix. A line with no step gets its line number as its step.

The worker reads each job's output copy (``experiments.logs``) from the byte offset where
it stopped (``MetricCursor``), so a restart or a second reader never reads a line twice; the
unique (job, name, step) constraint is the safety net. Storage is bounded: past
``SKYDECK_METRIC_MAX_POINTS`` points in one series, every second one of the older half is
dropped (the newest half stays whole), and the series says from which step it is dense.
The web only reads what this module stored; it never parses a log.
"""

import functools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import regex
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Max, OuterRef, Subquery
from django.db.models.constants import OnConflict
from django.utils import timezone

from . import logs
from .metric_models import METRIC_NAME_MAX, MetricCursor, MetricPattern, MetricPoint, MetricSeries
from .models import ACTIVE_JOB_STATUSES, Event, Job

logger = logging.getLogger(__name__)

MARKER = "SKYDECK"
STEP_KEYS = ("step", "_step")
TIME_KEY = "_timestamp"
MAX_STEP = 2**53
LINE_MAX = 8192  # a longer line is not looked at
PATTERN_MAX = 500
PATTERN_TIMEOUT = 0.05  # seconds a pattern may spend on one line
PATTERN_TIMEOUTS_MAX = 3  # past this many in one read, the pattern is left out for the rest of it
CHUNK = 1 << 20
JOB_BYTES_PER_PASS = 16 << 20
PASS_BYTES = 64 << 20
PASS_JOBS = 200
HISTORY_JOBS = 1000  # the first pass ever also reads the output of this many recent jobs
ATTEMPTS_SHOWN = 20
INSERT_BATCH = 1000  # rows to a statement

DEFAULT_MAX_POINTS = 10_000
DEFAULT_MAX_SERIES = 32

# A metric whose name says it should fall; anything else is taken as better when higher.
LOWER_IS_BETTER = re.compile(r"loss|err|perplex|ppl|wer|cer|mse|mae|rmse|nll|regret|latency|time|dist", re.I)


def max_points():
    return getattr(settings, "SKYDECK_METRIC_MAX_POINTS", DEFAULT_MAX_POINTS)


def max_series():
    return getattr(settings, "SKYDECK_METRIC_MAX_SERIES", DEFAULT_MAX_SERIES)


def goal_for(name):
    """``min`` for a metric that should fall (loss, error, ...), ``max`` otherwise: the default best."""
    return "min" if LOWER_IS_BETTER.search(name or "") else "max"


# --- the line formats ------------------------------------------------------------------------


@dataclass(slots=True)
class Reading:
    """What one line said: its step (None: the line's number), metric -> value, when."""

    step: int | None
    values: dict
    time: float | None = None
    dropped: int = 0  # values that were not finite numbers


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_NODE_PREFIX = re.compile(r"\([^()]*\)\s*")
_MARKED = re.compile(r"(?:^|\s)SKYDECK\s+")
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"([A-Za-z_][\w./-]*)=({_NUMBER})")
_SEPARATORS = re.compile(r"[\s,;|]+")
_NAME_OK = re.compile(rf"[^\x00-\x1f\x7f]{{1,{METRIC_NAME_MAX}}}")


@functools.lru_cache(maxsize=4096)
def _name_ok(name):
    return _NAME_OK.fullmatch(name) is not None


def _number(value):
    """A finite float from a JSON number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _step(value):
    """A step: a whole number from 0 to 2**53, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not value.is_integer()):
        return None
    value = int(value)
    return value if 0 <= value <= MAX_STEP else None


def _flatten(obj, prefix, values, reading):
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}/", values, reading)
            continue
        if not prefix and key in (*STEP_KEYS, TIME_KEY):
            continue
        number = _number(value)
        if number is None:
            if isinstance(value, float):
                reading.dropped += 1  # NaN or infinity
            continue
        if _name_ok(name):
            values[name] = number


def parse_json(text):
    """``{"step": 1, "loss": 0.5}`` -> Reading, or None if it is not such an object."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    step = None
    for key in STEP_KEYS:
        if key in obj:
            step = _step(obj[key])
            if step is None:
                return None  # a step that is not one: the line is not trusted
            break
    stamp = _number(obj.get(TIME_KEY))
    reading = Reading(step, {}, stamp if stamp is not None and 0 < stamp < 1e11 else None)
    _flatten(obj, "", reading.values, reading)
    return reading if reading.values or reading.dropped else None


def parse_pairs(text):
    """``step=1 loss=0.5, acc=0.9`` -> Reading, or None unless every word is a key=number pair."""
    values = {}
    for token in _SEPARATORS.split(text.strip()):
        if not token:
            continue
        match = _PAIR.fullmatch(token)
        if match is None:
            return None
        values[match[1]] = float(match[2])
    step = None
    for key in STEP_KEYS:
        if key in values:
            step = _step(values.pop(key))
            if step is None:
                return None
            break
    reading = Reading(step, {k: v for k, v in values.items() if math.isfinite(v) and len(k) <= METRIC_NAME_MAX})
    return reading if reading.values else None


class LinePattern:
    """An experiment's regular expression, checked: named groups that are metrics, or name/value pairs."""

    def __init__(self, text):
        text = (text or "").strip()
        if not text:
            raise ValidationError("Give a regular expression.")
        if len(text) > PATTERN_MAX:
            raise ValidationError(f"The pattern is over {PATTERN_MAX} characters.")
        try:
            self.compiled = regex.compile(text)
        except (regex.error, OverflowError, ValueError) as exc:
            raise ValidationError(f"Not a regular expression: {exc}.") from None
        groups = set(self.compiled.groupindex)
        self.text = text
        self.pairs = "name" in groups or "value" in groups
        if self.pairs and not {"name", "value"} <= groups:
            raise ValidationError("(?P<name>…) and (?P<value>…) go together: give both.")
        self.metrics = sorted(g for g in groups if g not in ("step", "name", "value"))
        if not self.pairs and not self.metrics:
            raise ValidationError(
                "Name a group for each metric, e.g. loss (?P<loss>[0-9.e+-]+), or use (?P<name>…) and (?P<value>…)."
            )

    def parse(self, text):
        """A Reading, or None; TimeoutError if the pattern takes too long on this line."""
        values, step = {}, None
        if self.pairs:
            for match in self.compiled.finditer(text, timeout=PATTERN_TIMEOUT):
                name, value = match["name"], _float(match["value"])
                if name and value is not None and _name_ok(name.strip()):
                    values[name.strip()] = value
                if step is None and "step" in self.compiled.groupindex:
                    step = _step_text(match["step"])
        else:
            match = self.compiled.search(text, timeout=PATTERN_TIMEOUT)
            if match is None:
                return None
            for group in self.metrics:
                value = _float(match[group])
                if value is not None:
                    values[group] = value
            if "step" in self.compiled.groupindex:
                step = _step_text(match["step"])
        return Reading(step, values) if values else None


def _float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _step_text(text):
    value = _float(text)
    return _step(value) if value is not None else None


def check_pattern(text):
    """The pattern, stripped, if it can be used; ValidationError saying why not."""
    return LinePattern(text).text


class LineParser:
    """The formats in their order: the marker, the experiment's pattern, then key=value pairs."""

    def __init__(self, pattern=None):
        self.pattern = None
        self.error = ""
        self.timeouts = 0
        if pattern:
            try:
                self.pattern = LinePattern(pattern)
            except ValidationError as exc:
                self.error = f"The metric pattern is not used: {' '.join(exc.messages)}"[:300]

    def parse(self, line):
        if len(line) > LINE_MAX:
            return None
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        if "\r" in line:
            line = line.rstrip("\r").rpartition("\r")[2]  # a progress bar: what the terminal shows last
        if line.startswith("("):
            line = _NODE_PREFIX.sub("", line, count=1)
        if MARKER in line:
            marked = _MARKED.search(line)
            if marked is not None:
                rest = line[marked.end() :].strip()
                return parse_json(rest) if rest.startswith("{") else parse_pairs(rest)
        if self.pattern is not None:
            try:
                reading = self.pattern.parse(line)
            except TimeoutError:
                self.timeouts += 1
                self.error = f"The metric pattern took over {PATTERN_TIMEOUT:g} s on a line; simplify it."
                if self.timeouts >= PATTERN_TIMEOUTS_MAX:
                    self.pattern = None
                reading = None
            if reading is not None:
                return reading
        if "=" in line:
            return parse_pairs(line)
        return None


# --- reading a job's output -----------------------------------------------------------------------


@dataclass
class Read:
    """What one read of a job's output brought: points (name, step, value, time) and where it stopped."""

    offset: int
    line: int
    points: list = field(default_factory=list)
    ignored: int = 0
    at_end: bool = False  # nothing left in the copy after ``offset``
    bytes: int = 0


def read_new(path, offset, line, parser, *, final=False, budget=JOB_BYTES_PER_PASS, now=None, cap=None):
    """Parse the complete lines of the copy at ``path`` from ``offset`` (the last one too when ``final``)."""
    now = now or timezone.now()
    read = Read(offset, line)
    restarted = False
    skip_first = False
    while read.bytes < budget:
        chunk = logs.read(path, read.offset, limit=min(CHUNK, budget - read.bytes))
        if not chunk.exists:
            read.at_end = True
            break
        if chunk.size < read.offset and not restarted:
            # The copy was started afresh (SkyPilot's when it lost its place): read it again from the top.
            read.offset, read.line, restarted = 0, 0, True
            continue
        data = chunk.data
        if not data:
            read.at_end = True
            break
        end = data.rfind(b"\n") + 1
        whole = chunk.at_end and final
        if whole:
            end = len(data)
        elif end == 0:
            if len(data) < CHUNK or chunk.at_end:
                break  # a line still being written: read it whole next time
            end = len(data)  # one line longer than a chunk: not a metric line, passed over
        pieces = data[:end].decode("utf-8", errors="replace").split("\n")
        if pieces and pieces[-1] == "":
            pieces.pop()
        for index, piece in enumerate(pieces):
            if index == 0 and skip_first:
                continue
            read.line += 1
            reading = parser.parse(piece)
            if reading is None:
                continue
            read.ignored += reading.dropped
            step = reading.step if reading.step is not None else read.line
            when = datetime.fromtimestamp(reading.time, UTC) if reading.time is not None else now
            if cap is not None and when > cap:
                when = cap
            for name, value in reading.values.items():
                read.points.append((name, step, value, when))
        skip_first = end == len(data) and not data.endswith(b"\n") and not whole
        read.offset += end
        read.bytes += end
        if read.offset >= chunk.size:
            read.at_end = True
            break
    return read


# --- storing ------------------------------------------------------------------------------------------


@dataclass
class Stored:
    points: int = 0  # read (stored unless already there)
    series: int = 0
    thinned: int = 0
    ignored: int = 0


def store(job, points, *, limit=None, names_limit=None):
    """Add points to a job's series: once each, within the limits. Call inside a transaction."""
    limit = limit or max_points()
    names_limit = names_limit or max_series()
    result = Stored()
    if not points:
        return result
    series = {s.name: s for s in MetricSeries.objects.filter(job=job)}
    batch, seen = {}, set()
    for name, step, value, when in points:
        if name not in series and name not in batch and len(series) + len(batch) >= names_limit:
            result.ignored += 1
            continue
        existing = series.get(name)
        if existing is not None and existing.dense_from_step is not None and step < existing.dense_from_step:
            continue  # inside the thinned part: read before, and thinned since
        if (name, step) in seen:
            continue
        seen.add((name, step))
        batch.setdefault(name, []).append((step, value, when))
    result.points = insert_points(job, batch)
    counts = dict(
        MetricPoint.objects.filter(job=job, name__in=list(batch))
        .values("name")
        .annotate(n=Count("id"))
        .values_list("name", "n")
    )
    created, updated = [], []
    for name, values in batch.items():
        row = series.get(name)
        if row is None:
            row = MetricSeries(job_id=job.pk, experiment_id=job.experiment_id, attempt=job.attempt, name=name)
            created.append(row)
        else:
            updated.append(row)
        steps = [s for s, _, _ in values]
        numbers = [v for _, v, _ in values]
        top = max(values, key=lambda item: item[0])
        row.first_step = min(steps) if row.first_step is None else min(row.first_step, min(steps))
        if row.last_step is None or top[0] > row.last_step:
            row.last_step, row.last_value = top[0], top[1]
        row.min_value = min(numbers) if row.min_value is None else min(row.min_value, min(numbers))
        row.max_value = max(numbers) if row.max_value is None else max(row.max_value, max(numbers))
        row.points = counts.get(name, 0)
        if row.points > limit:
            result.thinned += thin(job, row, limit)
    MetricSeries.objects.bulk_create(created)
    fields = ["first_step", "last_step", "last_value", "min_value", "max_value", "points", "thinned"]
    MetricSeries.objects.bulk_update(updated, [*fields, "dense_from_step", "updated_at"])
    result.series = len(created)
    return result


def insert_points(job, batch):
    """Insert name -> [(step, value, time)] for a job, skipping any (job, name, step) already there.

    The statement bulk_create(ignore_conflicts=True) writes, many rows to a statement:
    building a model instance and its SQL per point made a 100,000-point output take
    seconds on the ORM side alone.
    """
    ops = connection.ops
    fields = [MetricPoint._meta.get_field(f) for f in ("job", "name", "step", "value", "time")]
    columns = ", ".join(ops.quote_name(f.column) for f in fields)
    table = ops.quote_name(MetricPoint._meta.db_table)
    head = f"{ops.insert_statement(on_conflict=OnConflict.IGNORE)} {table} ({columns}) VALUES "
    suffix = ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None)
    adapted = {}  # most points of a read share one time

    def when_of(when):
        if when not in adapted:
            adapted[when] = ops.adapt_datetimefield_value(when)
        return adapted[when]

    rows = [(name, step, value, when_of(when)) for name, values in batch.items() for step, value, when in values]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One array a column: the driver parses a short statement, not thousands of placeholders.
            sql = (
                f"{head.removesuffix(' VALUES ')} SELECT %s, * FROM unnest(%s::varchar[], %s::bigint[], "
                f"%s::double precision[], %s::timestamptz[]) {suffix}"
            )
            for start in range(0, len(rows), 10 * INSERT_BATCH):
                chunk = rows[start : start + 10 * INSERT_BATCH]
                cursor.execute(sql, [job.pk, *(list(column) for column in zip(*chunk, strict=True))])
        else:
            per = max(1, min(INSERT_BATCH, (connection.features.max_query_params or 5 * INSERT_BATCH) // len(fields)))
            for start in range(0, len(rows), per):
                chunk = rows[start : start + per]
                sql = head + ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk)) + f" {suffix}"
                cursor.execute(sql, [value for row in chunk for value in (job.pk, *row)])
    return len(rows)


def thin(job, series, limit):
    """Keep the newest half of ``limit`` whole and halve what is older until the series fits; returns how many went.

    Each halving keeps the first point and every second one after it, so the oldest part of
    a long run gets sparser the older it is.
    """
    keep = max(1, limit // 2)
    points = MetricPoint.objects.filter(job=job, name=series.name).order_by("step")
    dropped = 0
    while series.points > limit:
        older = list(points.values_list("id", "step")[: max(0, series.points - keep)])
        if len(older) < 2:
            break
        drop = [pk for pk, _ in older[1::2]]
        for start in range(0, len(drop), 5000):
            MetricPoint.objects.filter(pk__in=drop[start : start + 5000]).delete()
        dense_from = points.filter(step__gt=older[-1][1]).values_list("step", flat=True).first()
        series.dense_from_step = dense_from if dense_from is not None else older[-1][1] + 1
        series.points -= len(drop)
        dropped += len(drop)
    series.thinned += dropped
    series.updated_at = timezone.now()
    return dropped


# --- the worker's pass ---------------------------------------------------------------------------------


@dataclass
class Parsed:
    jobs: int = 0
    lines: int = 0
    points: int = 0
    thinned: int = 0
    completed: int = 0
    bytes: int = 0
    failed: list = field(default_factory=list)

    def summary(self):
        text = f"{self.jobs} job outputs read, {self.bytes} bytes, {self.lines} lines, {self.points} points"
        if self.thinned:
            text += f", {self.thinned} old points thinned"
        if self.completed:
            text += f", {self.completed} completed"
        if self.failed:
            text += f"; failed: {', '.join(self.failed[:5])}"
        return text


def _pattern_of(job):
    try:
        return job.experiment.metric_pattern.pattern
    except ObjectDoesNotExist:
        return None


def parse_job(job, *, budget=JOB_BYTES_PER_PASS, now=None, result=None):
    """Read what is new in one job's output and store its points; a second reader at the same time does nothing."""
    now = now or timezone.now()
    result = result if result is not None else Parsed()
    try:
        cursor = job.metric_cursor
    except ObjectDoesNotExist:
        cursor, _ = MetricCursor.objects.get_or_create(job=job)
    if cursor.complete:
        return result
    final = job.output_complete
    parser = LineParser(_pattern_of(job))
    cap = job.ended_at if not job.is_active else None
    read = read_new(job.log_path, cursor.offset, cursor.line, parser, final=final, budget=budget, now=now, cap=cap)
    done = final and read.at_end
    result.jobs += 1
    result.bytes += read.bytes
    unchanged = (read.offset, read.line) == (cursor.offset, cursor.line)
    error = parser.error or cursor.error  # stays until the pattern changes: those lines were passed over
    if unchanged and not done and error == cursor.error:
        return result
    with transaction.atomic():
        # Compare and swap: a second reader of the same output (another worker) changes no row and stores nothing.
        moved = MetricCursor.objects.filter(
            pk=cursor.pk, offset=cursor.offset, line=cursor.line, complete=False
        ).update(
            offset=read.offset,
            line=read.line,
            complete=done,
            error=error,
            ignored=F("ignored") + read.ignored,
            updated_at=now,
        )
        if moved != 1:
            return result
        stored = store(job, read.points)
        if stored.ignored:
            MetricCursor.objects.filter(pk=cursor.pk).update(ignored=F("ignored") + stored.ignored)
    result.lines += read.line - cursor.line if read.line >= cursor.line else read.line
    cursor.offset, cursor.line, cursor.complete, cursor.error = read.offset, read.line, done, error
    result.points += stored.points
    result.thinned += stored.thinned
    result.completed += int(done)
    return result


def jobs_to_parse(limit=PASS_JOBS):
    """Jobs whose output may hold unread lines: active ones, those read but not to their end, and new ones."""
    active = set(Job.objects.active().exclude(log_path="").values_list("pk", flat=True))
    pending = set(MetricCursor.objects.filter(complete=False).values_list("job_id", flat=True))
    newest = MetricCursor.objects.aggregate(m=Max("job_id"))["m"]
    if newest is None:
        floor = (Job.objects.aggregate(m=Max("pk"))["m"] or 0) - HISTORY_JOBS
    else:
        floor = newest - 50  # a job id handed out before a higher one was seen
    fresh = set(
        Job.objects.filter(pk__gt=floor, metric_cursor__isnull=True).exclude(log_path="").values_list("pk", flat=True)
    )
    ids = sorted(active, reverse=True) + sorted((pending | fresh) - active, reverse=True)
    ids = ids[:limit]
    jobs = {
        j.pk: j
        for j in Job.objects.filter(pk__in=ids).select_related(
            "experiment", "experiment__metric_pattern", "metric_cursor"
        )
    }
    return [jobs[pk] for pk in ids if pk in jobs]


def parse_all(*, budget=PASS_BYTES, now=None):
    """One pass over every job with unread output: what the beat task ``parse_metrics`` runs."""
    now = now or timezone.now()
    result = Parsed()
    for job in jobs_to_parse():
        left = budget - result.bytes
        if left <= 0:
            break
        try:
            parse_job(job, budget=min(JOB_BYTES_PER_PASS, left), now=now, result=result)
        except Exception as exc:  # noqa: BLE001 - one job's output never stops the others'
            logger.exception("metrics of %s could not be read", job.name)
            result.failed.append(f"{job.name} ({type(exc).__name__})")
    return result


# --- the experiment's pattern --------------------------------------------------------------------------


def set_pattern(actor, experiment, text, *, cursor_reset=True):
    """Set (or, with an empty text, remove) an experiment's metric pattern; its jobs' output is read again.

    Every surface (the page, the API) calls this. Points stored before stay; lines the new
    pattern matches join them.
    """
    if not actor.may_change(experiment):
        raise PermissionDenied(f"You may not change {experiment.name}: only the owner, its group and staff may.")
    text = (text or "").strip()
    if text:
        try:
            text = check_pattern(text)
        except ValidationError as exc:
            raise ValidationError({"pattern": exc.messages}) from None
    with transaction.atomic():
        before = MetricPattern.objects.filter(experiment=experiment).values_list("pattern", flat=True).first()
        if (before or "") == text:
            return False
        if text:
            MetricPattern.objects.update_or_create(
                experiment=experiment, defaults={"pattern": text, "updated_by": actor.user}
            )
        else:
            MetricPattern.objects.filter(experiment=experiment).delete()
        if cursor_reset:
            job_ids = list(experiment.jobs.exclude(log_path="").values_list("pk", flat=True))
            MetricCursor.objects.filter(job_id__in=job_ids).update(offset=0, line=0, complete=False, error="")
            MetricCursor.objects.bulk_create([MetricCursor(job_id=pk) for pk in job_ids], ignore_conflicts=True)
        message = f"Metric pattern set to {text}" if text else "Metric pattern removed"
        actor.record(experiment, Event.Kind.EDIT, message, data={"metric_pattern": text})
    return True


def pattern_of(experiment):
    return MetricPattern.objects.filter(experiment=experiment).values_list("pattern", flat=True).first() or ""


# --- reading the series ---------------------------------------------------------------------------------


def _series_dict(row, times=False):
    found = {
        "job": row.job_id,
        "attempt": row.attempt,
        "name": row.name,
        "points": row.points,
        "thinned": row.thinned,
        "dense_from_step": row.dense_from_step,
        "first_step": row.first_step,
        "last_step": row.last_step,
        "last_value": row.last_value,
        "min_value": row.min_value,
        "max_value": row.max_value,
        "steps": [],
        "values": [],
    }
    if times:
        found["times"] = []
    return found


def series_of(job_ids, *, since=0, names=None, times=False):
    """Series of these jobs with their points stored after cursor ``since``; returns (series, cursor).

    Two queries whatever the number of points: the points after the cursor (an index on
    (job, id) finds only those), then the series rows (after the points: a series is written
    with its first points, so every point read has its row). The cursor is the highest point
    id answered: pass it as ``since`` next time.
    """
    rows = MetricSeries.objects.filter(job_id__in=job_ids)
    points = MetricPoint.objects.filter(job_id__in=job_ids, pk__gt=since)
    if names:
        rows, points = rows.filter(name__in=names), points.filter(name__in=names)
    fields = ("id", "job_id", "name", "step", "value", "time") if times else ("id", "job_id", "name", "step", "value")
    found = list(points.order_by("id").values_list(*fields))
    series = {(r.job_id, r.name): _series_dict(r, times) for r in rows.order_by("attempt", "name")}
    cursor = since
    for row in found:
        current = series.get((row[1], row[2]))
        if current is None:
            continue  # its job was deleted in between
        current["steps"].append(row[3])
        current["values"].append(row[4])
        if times:
            current["times"].append(row[5].timestamp())
    if found:
        cursor = found[-1][0]
    for current in series.values():
        steps = current["steps"]
        if any(a > b for a, b in zip(steps, steps[1:], strict=False)):  # stored out of step order (a re-read)
            order = sorted(range(len(steps)), key=steps.__getitem__)
            for key in ("steps", "values", "times"):
                if key in current:
                    current[key] = [current[key][i] for i in order]
    return list(series.values()), cursor


def job_metrics(job, *, since=0, names=None, times=False):
    series, cursor = series_of([job.pk], since=since, names=names, times=times)
    complete = MetricCursor.objects.filter(job=job, complete=True).exists()
    return {
        "job": job.pk,
        "attempt": job.attempt,
        "names": sorted({s["name"] for s in series}),
        "series": series,
        "cursor": cursor,
        "complete": complete,
        "limit": max_points(),
    }


def experiment_metrics(experiment, *, since=0, names=None, times=False):
    """The charts' data: the latest attempts, each metric's series per attempt, and a cursor to read on from."""
    jobs = list(
        experiment.jobs.order_by("-attempt").values("pk", "attempt", "status", "started_at", "ended_at")[
            :ATTEMPTS_SHOWN
        ]
    )
    jobs.reverse()
    series, cursor = series_of([j["pk"] for j in jobs], since=since, names=names, times=times)
    attempts = {j["pk"]: j["attempt"] for j in jobs}
    problems = MetricCursor.objects.filter(job_id__in=list(attempts)).exclude(error="").order_by("job_id")
    return {
        "experiment": experiment.name,
        "pattern": pattern_of(experiment),
        "problems": [
            {"attempt": attempts[pk], "message": error} for pk, error in problems.values_list("job_id", "error")
        ],
        "names": sorted({s["name"] for s in series}),
        "attempts": [
            {
                "attempt": j["attempt"],
                "job": j["pk"],
                "status": j["status"],
                "started_at": j["started_at"],
                "ended_at": j["ended_at"],
            }
            for j in jobs
        ],
        "series": series,
        "cursor": cursor,
        "live": any(j["status"] in ACTIVE_JOB_STATUSES for j in jobs),
        "limit": max_points(),
    }


def metric_names(experiments=None, limit=200):
    """The metric names there are (of these experiments), sorted."""
    rows = MetricSeries.objects.all()
    if experiments is not None:
        rows = rows.filter(experiment__in=experiments)
    return list(rows.order_by("name").values_list("name", flat=True).distinct()[:limit])


# --- comparing experiments by a metric -------------------------------------------------------------------


def value_of(series_rows, value="last", goal="min"):
    """One number per experiment from its series rows (of one metric): the latest, or the best of every attempt."""
    if not series_rows:
        return None
    if value == "last":
        return max(series_rows, key=lambda r: r["attempt"])["last_value"]
    if goal == "min":
        return min(r["min_value"] for r in series_rows)
    return max(r["max_value"] for r in series_rows)


def values_by_experiment(experiment_ids, name, value="last", goal="min"):
    """experiment id -> its number for metric ``name`` (one query)."""
    rows = {}
    for row in MetricSeries.objects.filter(experiment_id__in=experiment_ids, name=name).values(
        "experiment_id", "attempt", "last_value", "min_value", "max_value", "last_step", "points"
    ):
        rows.setdefault(row["experiment_id"], []).append(row)
    return {pk: value_of(found, value, goal) for pk, found in rows.items()}


def with_metric(queryset, name, value="last", goal="min"):
    """Experiments annotated with ``metric_value``: metric ``name``'s latest value, or its best (min or max)."""
    series = MetricSeries.objects.filter(experiment=OuterRef("pk"), name=name)
    if value == "last":
        best = series.order_by("-attempt").values("last_value")[:1]
    elif goal == "min":
        best = series.order_by("min_value").values("min_value")[:1]
    else:
        best = series.order_by("-max_value").values("max_value")[:1]
    return queryset.annotate(metric_value=Subquery(best))


def order_by_metric(queryset, name, *, value="last", goal="min", descending=False):
    """Experiments sorted by ``metric_value`` (those without the metric last), then by name."""
    order = F("metric_value").desc(nulls_last=True) if descending else F("metric_value").asc(nulls_last=True)
    return with_metric(queryset, name, value, goal).order_by(order, "name")


# --- a sweep's children compared by one metric -------------------------------------------------------------

VALUE_CHOICES = (("last", "latest"), ("best", "best"))
GOAL_CHOICES = (("min", "lowest"), ("max", "highest"))


@dataclass
class Comparison:
    """A sweep's children by one metric: their numbers, the best one, and what the plots need."""

    names: list
    metric: str
    value: str
    goal: str
    sort: str
    paths: list
    rows: list
    best: str | None
    plot: dict

    def token_parts(self):
        return [self.names, self.metric, self.value, self.goal, self.sort, [(r["name"], r["value"]) for r in self.rows]]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flag_axis(path, values, parameter):
    present = [v for v in values if v is not None]
    if present and all(_is_number(v) for v in present):
        positive = all(v > 0 for v in present)
        spread = positive and max(present) / min(present) >= 100
        log = positive and (spread or (isinstance(parameter, dict) and bool(parameter.get("log"))))
        return {"path": path, "kind": "number", "log": log}
    categories = sorted({str(v) for v in present})
    return {"path": path, "kind": "category", "categories": categories}


def _sort_key(sort, paths):
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    if key == "name":
        return key, descending
    if key.startswith("flag:") and key[5:] in paths:
        return key, descending
    return "value", descending


def _ordered(rows, sort, paths):
    key, descending = _sort_key(sort, paths)

    def value(row):
        if key == "name":
            return (0, row["name"])
        found = row["value"] if key == "value" else row["flags"].get(key[5:])
        if found is None:
            return None
        return (0, found) if _is_number(found) else (1, str(found))

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]  # last, whichever the direction
    present.sort(key=lambda r: (value(r), r["name"]), reverse=descending)
    return present + missing


def compare_sweep(sweep, *, metric="", value="last", goal="", sort=""):
    """The sweep's children by ``metric`` (default: a loss if there is one, else the first name): four queries."""
    children = list(sweep.experiments.order_by("id").values("pk", "name", "flags", "phase"))
    names = list(
        MetricSeries.objects.filter(experiment__sweep=sweep)
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()[:200]
    )
    if metric not in names:
        metric = next((n for n in names if "loss" in n.lower()), names[0] if names else "")
    value = value if value in dict(VALUE_CHOICES) else "last"
    goal = goal if goal in dict(GOAL_CHOICES) else goal_for(metric)
    paths = sorted(sweep.parameters or {})
    numbers = values_by_experiment([c["pk"] for c in children], metric, value, goal) if metric else {}
    rows = [
        {
            "pk": c["pk"],
            "name": c["name"],
            "phase": c["phase"],
            "flags": {p: (c["flags"] or {}).get(p) for p in paths},
            "value": numbers.get(c["pk"]),
            "best": False,
        }
        for c in children
    ]
    scored = [r for r in rows if r["value"] is not None]
    best = None
    if scored:
        winner = (min if goal == "min" else max)(scored, key=lambda r: r["value"])
        winner["best"] = True
        best = winner["name"]
    if not sort:
        sort = "value" if goal == "min" else "-value"
    rows = _ordered(rows, sort, paths)
    plot = {
        "metric": metric,
        "value": value,
        "goal": goal,
        "best": best,
        "axes": [_flag_axis(p, [r["flags"][p] for r in rows], (sweep.parameters or {}).get(p)) for p in paths],
        "children": [{"name": r["name"], "flags": r["flags"], "value": r["value"]} for r in rows],
    }
    return Comparison(names, metric, value, goal, sort, paths, rows, best, plot)
