"""Experiment -> LaunchSpec: the exact command line, resources and environment.

Flags reach a shell, so every value is quoted with ``shlex.quote`` and every
key must match ``FLAG_KEY_RE``. A value such as ``$(touch /tmp/x); rm -rf ~``
arrives at the program as that literal string.
"""

import re
import shlex

from django.core.exceptions import ValidationError

from clusters.backends.base import LaunchSpec

FLAG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
FLAG_VALUE_TYPES = (str, int, float, bool)


def validate_flag_key(key):
    if not isinstance(key, str) or not FLAG_KEY_RE.match(key):
        raise ValidationError(
            f"Flag name {key!r} is not valid: start with a letter or _, then letters, digits, _ . or -.",
            code="invalid_flag_key",
        )


def validate_flag_dict(flags):
    if not isinstance(flags, dict):
        raise ValidationError("Flags must be an object of name: value.", code="invalid_flags")
    for key, value in flags.items():
        validate_flag_key(key)
        if value is None or not isinstance(value, FLAG_VALUE_TYPES):
            raise ValidationError(
                f"Flag {key!r} must be a string, number or boolean, not {type(value).__name__}.",
                code="invalid_flag_value",
            )
        if isinstance(value, float) and value != value:  # NaN
            raise ValidationError(f"Flag {key!r} is not a number.", code="invalid_flag_value")


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


def launch_spec(experiment, attempt):
    """Everything a backend needs to run ``attempt`` of ``experiment``."""
    return LaunchSpec(
        job_name=experiment.job_name(attempt),
        cluster_name=experiment.cluster_name,
        command=build_command(experiment.command, experiment.flags, experiment.flag_style),
        setup=experiment.setup or "",
        envs={str(k): str(v) for k, v in (experiment.envs or {}).items()},
        workdir=experiment.workdir or "",
        accelerators=experiment.accelerators or "",
        num_nodes=experiment.num_nodes or 1,
        cpus=experiment.cpus or "",
        memory=experiment.memory or "",
        infra=experiment.infra or "",
        use_spot=bool(experiment.use_spot),
        disk_size=experiment.disk_size,
        image_id=experiment.image_id or "",
        autostop_minutes=experiment.autostop_minutes,
        managed=bool(experiment.managed),
    )
