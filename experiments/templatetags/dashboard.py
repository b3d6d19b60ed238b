"""Small display helpers for the dashboard templates."""

from datetime import datetime, timedelta

from django import template
from django.conf import settings
from django.utils import timezone

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
