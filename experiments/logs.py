"""A job's output as SkyDeck keeps it: a local file, read by byte offset.

The web never asks a backend for a log. The local backend's jobs write their
output straight into a file under its log folder; for SkyPilot jobs the worker
keeps a copy current (``clusters.backends.skypilot``). Either way the page
reads a file on this machine, and only inside SkyDeck's own log folders: a
``log_path`` that points anywhere else is not read.
"""

import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from .ansi import CONTROL_RE, CSI_RE, OTHER_ESC_RE

MAX_CHUNK = 256 * 1024


def log_roots():
    """The folders SkyDeck writes job output to, and the only ones it reads logs from.

    ``logs/`` holds every job's output since SkyDeck names the file itself; the other
    two are where earlier versions kept local and SkyPilot output.
    """
    return [
        (Path(settings.VAR_DIR) / "logs").resolve(),
        (Path(settings.SKYDECK_LOCAL_ROOT) / ".logs").resolve(),
        (Path(settings.VAR_DIR) / "skypilot-logs").resolve(),
    ]


def path_for(job):
    """Where a job's output is kept: named by SkyDeck from the job's own row, never by the job."""
    return str(Path(settings.VAR_DIR) / "logs" / job.backend / f"{job.pk}-{job.name}.log")


def confined(path):
    """``path`` resolved, if it lies inside a log folder; else None."""
    if not path:
        return None
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for root in log_roots():
        if resolved.is_relative_to(root) and resolved != root:
            return resolved
    return None


@dataclass
class Chunk:
    data: bytes
    offset: int  # where the next read starts
    size: int  # the copy's size now
    modified_at: datetime | None  # when the copy last grew
    exists: bool

    @property
    def text(self):
        return self.data.decode("utf-8", errors="replace")

    @property
    def at_end(self):
        return self.offset >= self.size


def _utf8_cut(data):
    """``data`` without a multi-byte character cut off at its end (read again with the next chunk)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0b1100_0000 == 0b1000_0000:
            continue  # a continuation byte: keep looking for the lead byte
        if byte & 0b1000_0000:
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return data if back >= need else data[:-back]
        return data
    return data


def read(path, offset, limit=MAX_CHUNK):
    """Up to ``limit`` bytes of the copy at ``path`` from ``offset``."""
    offset = max(0, int(offset))
    safe = confined(path)
    if safe is None:
        return Chunk(b"", offset, 0, None, False)
    try:
        with open(safe, "rb") as fh:
            stat = os.fstat(fh.fileno())
            fh.seek(min(offset, stat.st_size))
            data = fh.read(limit)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return Chunk(b"", offset, 0, None, False)
    if len(data) == limit:
        data = _utf8_cut(data)
    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    return Chunk(data, min(offset, stat.st_size) + len(data), stat.st_size, modified, True)


def tail(path, lines=20, limit=64 * 1024):
    """The last ``lines`` lines of the copy (for a failure's summary)."""
    safe = confined(path)
    if safe is None:
        return ""
    try:
        with open(safe, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def plain_tail(path, lines=6, width=500):
    """The last ``lines`` non-empty lines of an output file as plain text (colours and progress-bar redraws gone)."""
    raw = tail(path, lines=lines * 4)
    text = CONTROL_RE.sub("", CSI_RE.sub("", OTHER_ESC_RE.sub("", raw)))
    kept = [line.rsplit("\r", 1)[-1].rstrip()[:width] for line in text.split("\n")]
    return "\n".join([line for line in kept if line.strip()][-lines:])


def last_line(text):
    """The last non-empty line of a text (a traceback's names the exception)."""
    return next((line.strip() for line in reversed(str(text or "").splitlines()) if line.strip()), "")


# --- when a job last printed something (the stall watchdog, the detail page) ----------------


def checked_path(log_path):
    """A marker beside a kept copy, touched each time the worker refreshed the copy successfully."""
    return Path(f"{log_path}.checked")


def mark_checked(log_path):
    with contextlib.suppress(OSError):
        checked_path(log_path).touch()


def _mtime(path):
    try:
        return datetime.fromtimestamp(Path(path).stat().st_mtime, UTC)
    except OSError:
        return None


@dataclass(frozen=True)
class Output:
    at: datetime | None  # when the output last grew (None: nothing yet)
    checked_at: datetime | None  # when it was last known to be current (None: never)


def last_output(job, now=None, *, copied=None):
    """When the job last printed something, and when that was last known to be true.

    A local job writes its file itself, so the file is always current. A copy kept
    by the worker is only as current as its last successful refresh (``.checked``):
    a copy that could not be refreshed proves no silence. ``copied`` says whether
    the job's backend keeps copies (looked up when not given).
    """
    safe = confined(job.log_path)
    if safe is None:
        return Output(None, None)
    if copied is None:
        from clusters.backends import get_backend

        copied = hasattr(get_backend(job.backend), "sync_log")
    now = now or datetime.now(UTC)
    return Output(_mtime(safe), _mtime(checked_path(safe)) if copied else now)
