"""Small display helpers for the dashboard templates."""

from datetime import datetime, timedelta

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
    """How long from ``start`` to ``end``; while there is no end yet, a time the browser keeps counting."""
    if not start:
        return ""
    if end is None:
        return ago(start)
    return short_duration(end - start)


@register.simple_tag
def ago(moment):
    """How long ago ``moment`` was, as a <time data-relative> that skydeck.js advances in the browser.

    The server's text is right when the page is drawn; the script keeps it right, so a
    polled fragment need not be drawn again only because the clock moved.
    """
    if not isinstance(moment, datetime):
        return ""
    return format_html(
        '<time datetime="{}" data-relative title="{} UTC">{}</time>',
        moment.isoformat(),
        f"{moment:%Y-%m-%d %H:%M:%S}",
        age(moment),
    )


@register.simple_tag
def until(moment):
    """How long until ``moment``, as "in 12s" (then "now"), kept current by skydeck.js."""
    if not isinstance(moment, datetime):
        return ""
    left = moment - timezone.now()
    return format_html(
        '<time datetime="{}" data-relative="until" title="{} UTC">{}</time>',
        moment.isoformat(),
        f"{moment:%Y-%m-%d %H:%M:%S}",
        f"in {short_duration(left)}" if left.total_seconds() >= 1 else "now",
    )


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
def finished_run(experiment):
    """The current run has finished and the reconciler has seen it so: nothing more starts by itself.

    ``Experiment.run_finished`` reads the phase alone, which still says the last run's
    ending (Succeeded) between a Run or Restart and the reconciler's next look.
    """
    return experiment.run_finished and experiment.reconciled_run == experiment.run_number


@register.filter
def on_the_way(experiment):
    """Whether the desired state says more than the phase: on the way there, or not yet there."""
    return experiment.shows_desired or (experiment.run_finished and not finished_run(experiment))


@register.filter
def last_line(text):
    """The last non-empty line of a text: what a traceback ends with (``ZeroDivisionError: …``)."""
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@register.filter
def next_attempt(experiment):
    """When the reconciler will try again, or None when it will not (it gave up, or the run finished).

    Only a RUNNING experiment backing off after a failure has one: ``next_attempt_at`` itself
    outlives a give-up (RestartLimitReached, policy never, NoCloudAccess) and says nothing then.
    """
    if experiment.desired_state != "RUNNING" or experiment.phase != "BACKOFF":
        return None
    return experiment.next_attempt_at


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


@register.simple_tag
def choice_select(field):
    """A bound choice field as a plain <select>, drawn here: the form renderer draws each option
    through a template of its own (about 1 ms a field, most of the list page's form)."""
    value = "" if field.value() is None else str(field.value())
    options = format_html_join(
        "",
        '<option value="{}"{}>{}</option>',
        ((v, mark_safe(" selected") if str(v) == value else "", label) for v, label in field.field.choices),
    )
    return format_html('<select name="{}" id="{}">{}</select>', field.html_name, field.id_for_label, options)
