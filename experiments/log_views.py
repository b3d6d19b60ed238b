"""A job's log, appended piece by piece by htmx: read from SkyDeck's local copy, never from a backend."""

from urllib.parse import urlencode

from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from . import logs
from .ansi import ansi_to_html
from .models import Job

# Past this much text in one answer, ask for the next piece at once instead of in 2 s.
MORE_AT_ONCE = 64 * 1024


@require_GET
def job_log(request, name, attempt):
    """The next piece of a job's log from ``offset``."""
    job = get_object_or_404(Job.objects.select_related("experiment"), experiment__name=name, attempt=attempt)
    try:
        offset = max(0, int(request.GET.get("offset", "0")))
    except ValueError:
        offset = 0
    if job.is_active:
        job.mark_watched()
    chunk = logs.read(job.log_path, offset)
    rendered = ansi_to_html(chunk.text, request.GET.get("state", ""))
    next_offset = chunk.offset - len(rendered.held.encode())
    complete = job.output_complete and chunk.at_end and not rendered.held
    next_url = (
        reverse("experiments:job_log", args=[name, attempt])
        + "?"
        + urlencode({"offset": next_offset, "state": rendered.state})
    )
    return render(
        request,
        "experiments/detail.html#log_chunk",
        {
            "job": job,
            "html": rendered.html,
            "complete": complete,
            "empty": complete and chunk.size == 0,
            "more": len(chunk.data) >= MORE_AT_ONCE,
            "next_url": next_url,
            "copy": chunk,
        },
    )
