"""Small display helpers for the dashboard templates."""

from datetime import datetime, timedelta
from urllib.parse import quote

from django import template
from django.conf import settings
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

register = template.Library()

# Flags that, when present, name the W&B run (or give its URL outright).
WANDB_NAME_FLAGS = ("wandb.name", "wandb.run_name", "wandb_name", "wandb_run_name", "run_name")


@register.filter
def get_item(mapping, key):
    if not isinstance(mapping, dict):
        return None
    return mapping.get(key)


@register.filter
def flag_value(value):
    """A flag value as the command line spells it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@register.filter
def short_duration(value):
    """A timedelta (or seconds) as '3h 12m', '45s'."""
    if value is None or value == "":
        return ""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else float(value))
    if seconds < 0:
        seconds = 0
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@register.filter
def age(value):
    """How long ago a datetime was, shortly: '5m', '2d'."""
    if not isinstance(value, datetime):
        return ""
    return short_duration(timezone.now() - value)


@register.simple_tag
def duration_between(start, end):
    if not start:
        return ""
    return short_duration((end or timezone.now()) - start)


def wandb_url(name, flags):
    """A W&B link: a flag holding one, else the configured template filled with the run name."""
    flags = flags or {}
    for value in flags.values():
        if isinstance(value, str) and value.startswith("https://wandb.ai/"):
            return value
    template_ = settings.SKYDECK_WANDB_URL_TEMPLATE
    if not template_:
        return ""
    run_name = next((str(flags[k]) for k in WANDB_NAME_FLAGS if flags.get(k) not in (None, "")), name)
    project = next((str(flags[k]) for k in ("wandb.project", "wandb_project") if flags.get(k)), "")
    try:
        return template_.format(name=run_name, experiment=name, project=project)
    except (KeyError, IndexError, ValueError):
        return ""


@register.simple_tag
def wandb_link(experiment):
    return wandb_url(experiment.name, experiment.flags)


@register.filter
def status_class(value):
    """A CSS class for a phase, desired state or job status."""
    value = (value or "").upper()
    if value in {"RUNNING", "SUCCEEDED", "UP"}:
        return "ok" if value != "RUNNING" else "run"
    if value in {"FAILED", "FAILED_SETUP", "FAILED_DRIVER", "FAILED_LAUNCH", "LOST", "ERROR"}:
        return "bad"
    if value in {"LAUNCHING", "PENDING", "SETTING_UP", "STOPPING", "TERMINATING", "INIT", "BACKOFF"}:
        return "busy"
    if value in {"STOPPED", "CANCELLED"}:
        return "idle"
    if value == "TERMINATED":
        return "off"
    return "neutral"


def star_button(e, url):
    """The star toggle of a row (also swapped alone by the star view)."""
    label = "Unstar" if e.starred else "Star"
    return format_html(
        '<button type="submit" class="star{}" formaction="{}star/" hx-post="{}star/" hx-swap="outerHTML" '
        'hx-include="this" aria-pressed="{}" title="{} {}"><span aria-hidden="true">{}</span>'
        '<span class="visually-hidden">{} {}</span></button>',
        " is-starred" if e.starred else "", url, url, "true" if e.starred else "false", label, e.name,
        "★" if e.starred else "☆", label, e.name,
    )


@register.simple_tag
def star(e):
    return star_button(e, e.get_absolute_url())


def _truncate(text, length):
    return text if len(text) <= length else text[: length - 1] + "…"


@register.simple_tag(takes_context=True)
def experiment_row(context, e):
    """One row of the experiments table.

    Built in Python rather than in the template language: the table is polled
    every few seconds and a 50-row page spent most of its time in the template
    engine. The markup is the same the template produced.
    """
    url = e.get_absolute_url()
    pk = str(e.pk)
    selected = pk in context.get("selected", ())
    active_statuses = context.get("active_statuses", ())
    parts = [format_html(
        '<tr id="row-{}" class="{}"><td class="col-select"><input type="checkbox" name="selected" value="{}" '
        'id="sel-{}" aria-label="Select {}" {}></td><td class="col-star">{}</td><td class="col-name">'
        '<a href="{}" class="name">{}</a>',
        e.pk, "is-selected" if selected else "", e.pk, e.pk, e.name, "checked" if selected else "",
        star_button(e, url), url, e.name,
    )]
    if e.tags:
        parts.append(format_html('<div class="tags">{}</div>', format_html_join(
            "", '<a class="tag" href="?tag={}">{}</a>', ((quote(tag, safe=""), tag) for tag in e.tags))))
    if e.description:
        parts.append(format_html('<div class="muted desc">{}</div>', _truncate(e.description, 80)))
    out_of_date = ""
    job_generation = getattr(e, "last_job_generation", None)
    if job_generation and job_generation < e.generation and getattr(e, "last_job_status", None) in active_statuses:
        out_of_date = mark_safe(
            '<span class="badge s-busy" title="The running job has an older spec; restart to apply">out of date</span>'
        )
    parts.append(format_html(
        '</td><td class="col-state"><span class="badge s-{}" title="{}">{}</span> <span aria-label="wanted">→</span> '
        '<span class="badge d-{}">{}</span>{}{}</td>',
        status_class(e.phase), e.status_reason, e.get_phase_display(), e.desired_state.lower(), e.desired_state,
        out_of_date,
        format_html('<div class="muted reason">{}</div>', e.status_reason) if e.status_reason else "",
    ))
    resources = e.accelerators or "CPU"
    if e.num_nodes > 1:
        resources += f" × {e.num_nodes} nodes"
    if e.use_spot:
        resources += " · spot"
    if e.infra:
        resources += f" · {e.infra}"
    parts.append(format_html(
        '<td class="col-backend"><span class="backend">{}</span><div class="muted">{}</div></td>',
        e.get_backend_display(), resources,
    ))
    flags = e.flags if isinstance(e.flags, dict) else {}
    for path in context.get("flag_columns", ()):
        value = flags.get(path)
        if value is None:
            parts.append(mark_safe('<td class="flag-col mono"><span class="muted">—</span></td>'))
        else:
            parts.append(format_html('<td class="flag-col mono">{}</td>', _truncate(flag_value(value), 40)))
    attempt = getattr(e, "last_job_attempt", None)
    if attempt:
        job = format_html('<a href="{}jobs/{}/">#{}</a> <span class="badge s-{}">{}</span>', url, attempt, attempt,
                          status_class(e.last_job_status), e.last_job_status)
    else:
        job = mark_safe('<span class="muted">no job yet</span>')
    wandb = wandb_url(e.name, e.flags)
    parts.append(format_html(
        '<td class="col-job">{}</td><td class="col-age"><time datetime="{}">{}</time></td>'
        '<td class="col-duration">{}</td><td class="col-actions">{}'
        '<details class="menu"><summary aria-label="Actions for {}">⋯</summary><div class="menu-items">'
        '<button type="submit" formaction="{}state/" name="state" value="RUNNING">Run</button>'
        '<button type="submit" formaction="{}state/" name="state" value="STOPPED">Stop</button>'
        '<button type="submit" formaction="{}state/" name="state" value="TERMINATED" class="danger">Terminate…</button>'
        '<a href="{}edit/">Edit</a><a href="{}clone/">Clone</a></div></details></td></tr>',
        job, e.created_at.isoformat() if e.created_at else "", age(e.created_at),
        duration_between(getattr(e, "last_job_started", None), getattr(e, "last_job_ended", None)),
        format_html('<a href="{}" target="_blank" rel="noopener" class="wandb">W&amp;B</a>', wandb) if wandb else "",
        e.name, url, url, url, url, url,
    ))
    return mark_safe("".join(parts))
