"""Weights & Biases: the link to an experiment's run, and a run identity that survives restarts."""

import re

from django.conf import settings

# Flags that, when present, name the W&B run (or give its URL outright).
NAME_FLAGS = ("wandb.name", "wandb.run_name", "wandb_name", "wandb_run_name", "run_name")
PROJECT_FLAGS = ("wandb.project", "wandb_project")


def run_url(name, flags):
    """A W&B link: a flag holding one, else the configured template filled with the run name ('' if none)."""
    flags = flags or {}
    for value in flags.values():
        if isinstance(value, str) and value.startswith("https://wandb.ai/"):
            return value
    template = settings.SKYDECK_WANDB_URL_TEMPLATE
    if not template:
        return ""
    run_name = next((str(flags[k]) for k in NAME_FLAGS if flags.get(k) not in (None, "")), name)
    project = next((str(flags[k]) for k in PROJECT_FLAGS if flags.get(k)), "")
    try:
        return template.format(name=run_name, experiment=name, project=project)
    except (KeyError, IndexError, ValueError):
        return ""


def run_id(experiment):
    """Stable for one experiment and one run: its restarts continue the same W&B run, a new run starts one."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", experiment.name)
    return f"{name}-{experiment.pk}-run{experiment.run_number}"[:128]


def environment(experiment):
    """WANDB_RUN_ID and WANDB_RESUME=allow where the experiment has a W&B link; else nothing."""
    if not run_url(experiment.name, experiment.flags):
        return {}
    return {"WANDB_RUN_ID": run_id(experiment), "WANDB_RESUME": "allow"}
