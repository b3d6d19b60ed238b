"""Experiment -> LaunchSpec: the exact command line, resources and environment.

Flags reach a shell, so every value is quoted with ``shlex.quote`` and every
key must match ``FLAG_KEY_RE``. A value such as ``$(touch /tmp/x); rm -rf ~``
arrives at the program as that literal string.
"""

import shlex

from django.core.exceptions import ValidationError

from clusters.backends.base import LaunchSpec

from . import wandb
from .validators import validate_flag_dict


def format_flag_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flag_arguments(flags, style="plain"):
    """The flags as shell-quoted arguments, sorted by key."""
    validate_flag_dict(flags)
    prefix = "--" if style == "dashdash" else ""
    return [shlex.quote(f"{prefix}{key}={format_flag_value(flags[key])}") for key in sorted(flags)]


def build_command(command, flags, style="plain"):
    """The command line that runs: the base command, then the quoted flags."""
    base = (command or "").strip()
    if not base:
        raise ValidationError("The command is empty.", code="empty_command")
    return " ".join([base, *flag_arguments(flags, style)])


def launch_spec(experiment, attempt, log_path=""):
    """Everything a backend needs to run ``attempt`` of ``experiment``; its output goes to ``log_path``."""
    return LaunchSpec(
        job_name=experiment.job_name(attempt),
        cluster_name=experiment.cluster_name,
        command=build_command(experiment.command, experiment.flags, experiment.flag_style),
        setup=experiment.setup or "",
        # The user's own variables win over SkyDeck's (the W&B run identity).
        envs={**wandb.environment(experiment), **{str(k): str(v) for k, v in (experiment.envs or {}).items()}},
        workdir=experiment.workdir or "",
        accelerators=experiment.accelerators or "",
        num_nodes=experiment.num_nodes or 1,
        cpus=experiment.cpus or "",
        memory=experiment.memory or "",
        infra=experiment.infra or "",
        use_spot=bool(experiment.use_spot),
        disk_size=experiment.disk_size,
        image_id=experiment.image_id or "",
        autostop_minutes=experiment.idle_minutes,
        managed=bool(experiment.managed),
        log_path=log_path,
    )
