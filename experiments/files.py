"""Declarative files: SkyPilot task YAML in and out, and skydeck.yaml with a plan before any change.

* **Task YAML → experiment** (``experiment_from_task``, ``import_task``). Read with PyYAML against
  SkyPilot's documented task schema: the web process never imports SkyPilot. What SkyDeck cannot
  pass on to SkyPilot (file mounts, a list of candidate resources, an instance type, …) is refused
  with the line and the field. SkyPilot's own ``sky.Task`` checks the spec in the worker before
  anything is provisioned, and ``manage.py apply`` asks it too before it changes anything
  (``check_launchable``).
* **Experiment or job → task YAML** (``experiment_task_yaml``, ``job_task_yaml``): what SkyDeck
  runs — the command line of ``launch_spec``, the resources of ``resources_kwargs`` — written so that
  ``sky launch`` runs it unchanged.
* **skydeck.yaml**, experiments and sweeps in SkyDeck's own words. ``read_file`` checks it (every
  problem with its line and field), ``plan`` compares it with the database — create, update (with
  the fields that change), desired state, delete (only when pruning), unchanged, refused — and
  ``apply`` carries the plan out through ``intent`` in one transaction, or not at all. Applying the
  same file twice changes nothing the second time. ``export_file`` writes one.
* ``plan_desired_state`` is the same kind of plan for a bulk action of the list page.
"""

import dataclasses
import difflib
import json
import math
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from clusters.backends import BackendError, enabled_backends, get_backend
from clusters.backends.base import infra_cannot_stop
from clusters.backends.skypilot import resources_kwargs

from . import intent, sweeps
from .launch import build_command, flag_arguments, format_flag_value, launch_spec
from .models import ACTIVE_JOB_STATUSES, DesiredState, Experiment, FlagSchema, Job, Phase, Sweep
from .validators import (
    ENV_NAME_RE,
    NAME_HELP,
    NAME_MAX,
    NAME_RE,
    RESERVED_NAMES,
    storable_text,
    validate_flag_key,
    validate_flag_value,
    validate_sweep,
)

FORMAT_VERSION = 1
# A file with more values than this is refused (an alias repeated into a "billion laughs" stays small on disk).
MAX_VALUES = 50_000

# --- reading YAML, with the line of every value ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where (file, line, field) and what."""

    source: str
    line: int | None
    field: str
    message: str

    def __str__(self):
        where = f"{self.source} line {self.line}" if self.line else self.source
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class FileInvalid(ValueError):
    """A file that cannot be used as it is; ``problems`` says every reason, with its line and field."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def field_path(path):
    """``("experiments", 1, "flags")`` as ``experiments[1].flags``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclasses.dataclass
class Doc:
    """A YAML document read into Python, with the line of every key and item (by path)."""

    source: str
    data: Any
    lines: dict

    def line(self, path):
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)


class Problems:
    def __init__(self):
        self.found = []

    def add(self, doc, path, message):
        self.found.append(Problem(doc.source, doc.line(path), field_path(path), message))

    def raise_if_any(self):
        if self.found:
            # The file's own problems in line order, then those of the task files it names.
            sources = list(dict.fromkeys(p.source for p in self.found))
            raise FileInvalid(sorted(self.found, key=lambda p: (sources.index(p.source), p.line or 0)))


class _Reader:
    """Plain Python values from PyYAML's node tree, with lines; duplicate keys and unstorable text are problems."""

    def __init__(self, source):
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()
        self.lines = {}
        self.problems = []
        self.count = 0

    def problem(self, node, path, message):
        self.problems.append(Problem(self.source, node.start_mark.line + 1, field_path(path), message))

    def build(self, node, path):
        self.count += 1
        if self.count > MAX_VALUES:
            raise FileInvalid(
                [Problem(self.source, None, "", f"the file holds more than {MAX_VALUES} values: too large to read.")]
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            try:
                self.constructor.flatten_mapping(node)  # "<<: *anchor" merge keys
            except yaml.YAMLError as exc:
                self.problem(node, path, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")
                return {}
            out = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problem(key_node, path, "a key must be plain text.")
                    continue
                key = key_node.value  # as written: "on" and "1e-3" stay text, not a boolean or a number
                if not storable_text(key):
                    self.problem(key_node, path, "a key holds characters that cannot be stored (NUL).")
                    continue
                if key in out:
                    self.problem(key_node, path + (key,), f"{key!r} is given twice.")
                    continue
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            value = self.constructor.construct_object(node)
        except yaml.YAMLError as exc:
            self.problem(node, path, f"not a value SkyDeck reads: {getattr(exc, 'problem', None) or exc}")
            return None
        if not isinstance(value, (str, int, float, bool, type(None))):
            value = node.value  # a date or a binary: SkyDeck reads the text as written
        if isinstance(value, str) and not storable_text(value):
            self.problem(node, path, "holds characters that cannot be stored (NUL or a lone surrogate).")
        return value


def read_yaml(text, source):
    """``text`` (str or UTF-8 bytes) as a ``Doc``; ``FileInvalid`` names the line when it is not YAML."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise FileInvalid([Problem(source, None, "", "is not UTF-8 text.")]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "cannot be read"
        raise FileInvalid([Problem(source, mark.line + 1 if mark else None, "", f"not valid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise FileInvalid([Problem(source, None, "", f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise FileInvalid([Problem(source, None, "", "nested too deeply to read.")]) from None
    reader = _Reader(source)
    try:
        data = reader.build(root, ()) if root is not None else None
    except RecursionError:
        raise FileInvalid([Problem(source, None, "", "nested too deeply to read.")]) from None
    if reader.problems:
        raise FileInvalid(reader.problems)
    return Doc(source, data, reader.lines)


def _unknown(key, known, what):
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field: not a field of {what}{hint}."


# --- writing YAML ---------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block literals for text with newlines, short lists of values in one line, list items indented."""

    def ignore_aliases(self, data):
        return True

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _represent_str(dumper, value):
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_str(value)


def _represent_list(dumper, value):
    flat = all(isinstance(v, (str, int, float, bool)) and "\n" not in str(v) for v in value)
    short = flat and len(json.dumps(value, default=str)) <= 80
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=short)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def dump_yaml(data, header=""):
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=2**20, default_flow_style=False)
    return header + body


# --- a SkyPilot task YAML -> experiment fields -----------------------------------------------------

TASK_FIELDS = ("name", "workdir", "num_nodes", "resources", "envs", "setup", "run")
RESOURCE_FIELDS = (
    "infra",
    "cloud",
    "region",
    "zone",
    "accelerators",
    "cpus",
    "memory",
    "use_spot",
    "disk_size",
    "image_id",
    "autostop",
    "any_of",
    "ordered",
)
PASSED_ON = "SkyDeck passes on name, resources, num_nodes, workdir, envs, setup and run"
# Fields of SkyPilot's task schema that SkyDeck cannot hand on to SkyPilot: each refused with its reason.
TASK_REFUSED = {
    "file_mounts": "SkyDeck cannot pass file mounts on to SkyPilot: put the files in the workdir, or fetch them "
    "in setup (e.g. aws s3 cp), or launch this task with sky launch.",
    "secrets": "SkyDeck cannot pass SkyPilot secrets on: it would have to keep them in its database.",
    "managed_secrets": "SkyDeck cannot pass SkyPilot's managed secrets on.",
    "service": "a service is for sky serve, not an experiment SkyDeck runs.",
    "pool": "a pool is for SkyPilot's job pools, not an experiment SkyDeck runs.",
    "volumes": "SkyDeck cannot pass volumes on to SkyPilot.",
    "volume_mounts": "SkyDeck cannot pass volume mounts on to SkyPilot.",
    "config": "SkyDeck cannot pass a task's config overrides on to SkyPilot.",
    "event_callback": "SkyDeck cannot pass an event callback on to SkyPilot.",
    "inputs": "SkyDeck cannot pass inputs on to SkyPilot.",
    "outputs": "SkyDeck cannot pass outputs on to SkyPilot.",
    "file_mounts_mapping": "is SkyPilot's own bookkeeping, not a field to write.",
    "api_server_access": "SkyDeck cannot pass API server access on to SkyPilot.",
    "_metadata": "is SkyPilot's own bookkeeping, not a field to write.",
}
RESOURCES_REFUSED = (
    "instance_type",
    "job_recovery",
    "spot_recovery",
    "disk_tier",
    "network_tier",
    "local_disk",
    "max_hourly_cost",
    "ports",
    "labels",
    "accelerator_args",
    "volumes",
    "priority",
    "priority_class",
    "ephemeral_storage",
    "hooks",
)
QUANTITY_RE = re.compile(r"^\d+(\.\d+)?\+?$")
ACCELERATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:\d+(\.\d+)?)?$")
SIZE_UNITS = {"": 1, "g": 1, "gb": 1, "gi": 1, "gib": 1, "t": 1024, "tb": 1024, "ti": 1024, "tib": 1024}
TIME_UNITS = {"": 1, "m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}


@dataclasses.dataclass
class Reading:
    """What a task (or an entry of a skydeck.yaml) says: experiment fields, and where each was written."""

    fields: dict = dataclasses.field(default_factory=dict)
    origins: dict = dataclasses.field(default_factory=dict)  # field -> (doc, path)
    name: str | None = None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _typed(text):
    """A flag's text as the value SkyDeck would write back as the same text: 4, 0.1, true, or the text itself."""
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text) and str(int(text)) == text:
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) and format_flag_value(number) == text else text


FLAG_WORD_RE = re.compile(r"^(--)?([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)


def split_flags(run):
    """``(command, flags, flag_style)``: the run line as SkyDeck's command and its flags, where it is exactly that.

    A one-line run whose last words are ``key=value`` (or all ``--key=value``), sorted by key and quoted
    as SkyDeck quotes them, is that command with those flags: building it again gives back the very same
    line. Anything else is a command with no flags.
    """
    line = run.strip()
    if not line or "\n" in line:
        return run, {}, "plain"
    try:
        words = shlex.split(line)
    except ValueError:
        return run, {}, "plain"
    tail = 0
    for word in reversed(words):
        if not FLAG_WORD_RE.fullmatch(word):
            break
        tail += 1
    for count in range(tail, 0, -1):
        matches = [FLAG_WORD_RE.fullmatch(w) for w in words[len(words) - count :]]
        dashes = {bool(m.group(1)) for m in matches}
        keys = [m.group(2) for m in matches]
        if len(dashes) != 1 or keys != sorted(set(keys)):
            continue
        style = "dashdash" if dashes.pop() else "plain"
        flags = {m.group(2): _typed(m.group(3)) for m in matches}
        try:
            arguments = " ".join(flag_arguments(flags, style))
        except ValidationError:
            continue
        if not line.endswith(" " + arguments):
            continue
        command = line[: -len(arguments)].strip()
        # The command must be more than words that look like flags (A=1 B=2 sets variables, it runs nothing).
        if any(not FLAG_WORD_RE.fullmatch(w) for w in words[: len(words) - count]) and (
            build_command(command, flags, style) == line
        ):
            return command, flags, style
    return run, {}, "plain"


def _check_split(reading):
    """Keep the split of the run line only if the flag schemas leave its text as it is."""
    flags = reading.fields.get("flags")
    if not flags:
        return
    coerced, errors, _ = FlagSchema.objects.check_flags(flags)
    style = reading.fields.get("flag_style", "plain")
    same = not errors and build_command(reading.fields["command"], coerced, style) == build_command(
        reading.fields["command"], flags, style
    )
    if not same:
        reading.fields["command"] = build_command(reading.fields["command"], flags, style)
        reading.fields["flags"], reading.fields["flag_style"] = {}, "plain"


def _resolve_workdir(value, base_dir, doc, path, problems):
    if value.startswith("~") or Path(value).is_absolute():
        return value
    if base_dir is None:
        problems.add(
            doc,
            path,
            f"a relative workdir ({value!r}) means nothing to SkyDeck's worker: give an absolute path on the "
            "machine that runs the worker.",
        )
        return value
    return str((Path(base_dir) / value).resolve())


def _accelerators(value, doc, path, problems):
    """One accelerator as ``name`` or ``name:count``; a set or list of candidates is refused."""
    candidates = None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") or text.startswith("[") or "," in text:
            candidates = [p.strip().strip("'\"") for p in text.strip("{}[]").split(",") if p.strip()]
        else:
            candidates = [text]
    elif isinstance(value, dict):
        candidates = []
        for name, count in value.items():
            if count is not None and not _is_number(count):
                problems.add(doc, path + (name,), "an accelerator's count must be a number.")
                return None
            candidates.append(name if count is None else f"{name}:{format_flag_value(count)}")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        candidates = [v.strip() for v in value]
    else:
        problems.add(doc, path, "give one accelerator as NAME or NAME:COUNT, e.g. H100:8.")
        return None
    if len(candidates) > 1:
        problems.add(
            doc,
            path,
            f"{len(candidates)} candidate accelerators ({', '.join(candidates)}): SkyDeck launches one set of "
            "resources per experiment and cannot pass a list of candidates on. Keep one, or make one experiment "
            "per candidate.",
        )
        return None
    if not candidates or not candidates[0]:
        return ""
    accelerator = candidates[0]
    if not ACCELERATOR_RE.fullmatch(accelerator):
        problems.add(doc, path, f"{accelerator!r} is not NAME or NAME:COUNT (e.g. H100:8).")
        return None
    return accelerator


def _quantity(value, what, doc, path, problems):
    if _is_number(value):
        value = format_flag_value(value)
    if not isinstance(value, str) or not QUANTITY_RE.fullmatch(value.strip()):
        problems.add(
            doc, path, f"{what} must be a number, optionally followed by + (e.g. 8 or 8+); got {json.dumps(value)}."
        )
        return None
    return value.strip()


def _disk_size(value, doc, path, problems):
    if _is_int(value) and value > 0:
        return value
    match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", value.strip()) if isinstance(value, str) else None
    unit = match.group(2).lower() if match else None
    if match and unit in SIZE_UNITS and int(match.group(1)) > 0:
        return int(match.group(1)) * SIZE_UNITS[unit]
    problems.add(doc, path, f"disk_size must be a whole number of GB (e.g. 256 or 256GB); got {json.dumps(value)}.")
    return None


def _autostop(value, infra, reading, doc, path, problems):
    """SkyPilot's autostop as SkyDeck's idle policy: minutes, or kept up (false)."""
    fields = reading.fields
    if value is False:
        fields["keep_cluster_up"] = True
    elif value is True or value is None:
        pass  # SkyDeck's own idle policy
    elif _is_int(value) and value >= 0:
        fields["autostop_minutes"] = value
    elif isinstance(value, str) and (m := re.fullmatch(r"(\d+)([mhdwMHDW]?)", value.strip())):
        fields["autostop_minutes"] = int(m.group(1)) * TIME_UNITS[m.group(2).lower()]
    elif isinstance(value, dict):
        extra = set(value) - {"idle_minutes", "down"}
        if extra:
            problems.add(doc, path + (sorted(extra)[0],), "SkyDeck passes on autostop's idle_minutes and down only.")
            return
        minutes = value.get("idle_minutes")
        if minutes is not None and not (_is_int(minutes) and minutes >= 0):
            problems.add(doc, path + ("idle_minutes",), "must be a whole number of minutes.")
            return
        if value.get("down") is True and not infra_cannot_stop(infra):
            problems.add(
                doc,
                path + ("down",),
                "SkyDeck stops an idle cluster where the infra can stop it, and tears it down only where it cannot "
                "(Slurm, Kubernetes): it cannot be told to tear down here. Remove down, or set the experiment "
                "TERMINATED when it is done.",
            )
            return
        if minutes is not None:
            fields["autostop_minutes"] = minutes
    else:
        problems.add(doc, path, "autostop must be true, false, a number of minutes or {idle_minutes, down}.")
        return
    for name in ("keep_cluster_up", "autostop_minutes"):
        if name in fields:
            reading.origins[name] = (doc, path)


def _resources(data, doc, path, problems, reading):
    if data is None:
        return
    if not isinstance(data, dict):
        problems.add(doc, path, "resources must be a mapping (accelerators, infra, cpus, …).")
        return
    data = dict(data)
    if "any_of" in data and "ordered" in data:
        problems.add(doc, path, "give any_of or ordered, not both (SkyPilot refuses both too).")
        return
    for key in ("any_of", "ordered"):
        if key not in data:
            continue
        candidates = data.pop(key)
        if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
            problems.add(doc, path + (key,), "must be a list of resources.")
            return
        if len(candidates) > 1:
            problems.add(
                doc,
                path + (key,),
                f"{len(candidates)} candidate resources: SkyDeck launches one set of resources per experiment and "
                "cannot pass a list of candidates on. Keep one, or make one experiment per candidate.",
            )
            return
        if candidates:
            for name, value in candidates[0].items():
                data[name] = value
    fields = reading.fields
    for key in data:
        here = path + (key,)
        if key in RESOURCES_REFUSED or (key.startswith("_") and key not in RESOURCE_FIELDS):
            problems.add(doc, here, f"SkyDeck cannot pass resources.{key} on to SkyPilot ({PASSED_ON}).")
        elif key not in RESOURCE_FIELDS:
            problems.add(doc, here, _unknown(key, (*RESOURCE_FIELDS, *RESOURCES_REFUSED), "SkyPilot's resources"))
    infra = data.get("infra")
    location = [data.get(k) for k in ("cloud", "region", "zone")]
    if infra is not None and any(v is not None for v in location):
        problems.add(doc, path + ("infra",), "give infra, or cloud/region/zone, not both (SkyPilot refuses both too).")
    elif infra is not None:
        if not isinstance(infra, str) or not re.fullmatch(r"\S+", infra.strip()):
            problems.add(doc, path + ("infra",), "infra is text such as aws/us-east-1, k8s/my-context or slurm.")
        else:
            fields["infra"], reading.origins["infra"] = infra.strip(), (doc, path + ("infra",))
    elif any(v is not None for v in location):
        if not all(v is None or (isinstance(v, str) and re.fullmatch(r"\S+", v)) for v in location):
            problems.add(doc, path + ("cloud",), "cloud, region and zone are names without spaces.")
        else:
            cloud, region, zone = location
            parts = [cloud or "*", region or ("*" if zone else None), zone]
            fields["infra"] = "/".join(p for p in parts if p)
            reading.origins["infra"] = (doc, path + ("cloud" if cloud else "region" if region else "zone",))
    if "accelerators" in data and data["accelerators"] is not None:
        value = _accelerators(data["accelerators"], doc, path + ("accelerators",), problems)
        if value is not None:
            fields["accelerators"], reading.origins["accelerators"] = value, (doc, path + ("accelerators",))
    for key in ("cpus", "memory"):
        if data.get(key) is not None:
            value = _quantity(data[key], key, doc, path + (key,), problems)
            if value is not None:
                fields[key], reading.origins[key] = value, (doc, path + (key,))
    if data.get("use_spot") is not None:
        if not isinstance(data["use_spot"], bool):
            problems.add(doc, path + ("use_spot",), "must be true or false.")
        else:
            fields["use_spot"], reading.origins["use_spot"] = data["use_spot"], (doc, path + ("use_spot",))
    if data.get("disk_size") is not None:
        value = _disk_size(data["disk_size"], doc, path + ("disk_size",), problems)
        if value is not None:
            fields["disk_size"], reading.origins["disk_size"] = value, (doc, path + ("disk_size",))
    if data.get("image_id") is not None:
        if not isinstance(data["image_id"], str):
            problems.add(
                doc,
                path + ("image_id",),
                "SkyDeck passes on one image_id as text; an image per region cannot be passed on.",
            )
        else:
            fields["image_id"], reading.origins["image_id"] = data["image_id"], (doc, path + ("image_id",))
    if "autostop" in data:
        _autostop(data["autostop"], fields.get("infra", ""), reading, doc, path + ("autostop",), problems)


def read_task(doc, path, data, problems, *, base_dir=None):
    """What a SkyPilot task (a mapping in ``doc`` at ``path``) says, as experiment fields (a ``Reading``)."""
    reading = Reading()
    if not isinstance(data, dict):
        problems.add(doc, path, "a SkyPilot task is a mapping (name, resources, setup, run, …).")
        return reading
    for key in data:
        if key in TASK_REFUSED:
            problems.add(doc, path + (key,), TASK_REFUSED[key])
        elif key not in TASK_FIELDS:
            problems.add(doc, path + (key,), _unknown(key, (*TASK_FIELDS, *TASK_REFUSED), "a SkyPilot task"))
    fields, origins = reading.fields, reading.origins

    def text(key):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.add(doc, path + (key,), "must be text.")
            return None
        return value

    if (name := text("name")) is not None:
        reading.name = name
    if (run := text("run")) is not None:
        command, flags, style = split_flags(run)
        fields.update(command=command, flags=flags, flag_style=style)
        for key in ("command", "flags", "flag_style"):
            origins[key] = (doc, path + ("run",))
    if (setup := text("setup")) is not None:
        fields["setup"], origins["setup"] = setup, (doc, path + ("setup",))
    workdir = data.get("workdir")
    if isinstance(workdir, dict):
        problems.add(
            doc,
            path + ("workdir",),
            "SkyDeck cannot pass a git workdir ({url, ref}) on to SkyPilot: clone it on the worker and give its path.",
        )
    elif workdir is not None:
        if not isinstance(workdir, str):
            problems.add(doc, path + ("workdir",), "must be a path.")
        else:
            fields["workdir"] = _resolve_workdir(workdir, base_dir, doc, path + ("workdir",), problems)
            origins["workdir"] = (doc, path + ("workdir",))
    num_nodes = data.get("num_nodes")
    if num_nodes is not None:
        if not _is_int(num_nodes) or num_nodes < 1:
            problems.add(doc, path + ("num_nodes",), "must be a whole number, at least 1.")
        else:
            fields["num_nodes"], origins["num_nodes"] = num_nodes, (doc, path + ("num_nodes",))
    envs = data.get("envs")
    if envs is not None:
        if not isinstance(envs, dict):
            problems.add(doc, path + ("envs",), "must be a mapping of NAME: value.")
        else:
            out = {}
            for key, value in envs.items():
                here = path + ("envs", key)
                if not ENV_NAME_RE.fullmatch(key):
                    problems.add(doc, here, f"{key!r} is not an environment variable name.")
                elif value is None:
                    problems.add(
                        doc,
                        here,
                        "has no value: SkyPilot asks for it with --env at launch, SkyDeck needs it written here.",
                    )
                elif not isinstance(value, (str, int, float, bool)):
                    problems.add(doc, here, "must be text or a number.")
                else:
                    out[key] = str(value)  # as SkyPilot's own loader does
            fields["envs"], origins["envs"] = out, (doc, path + ("envs",))
    _resources(data.get("resources"), doc, path + ("resources",), problems, reading)
    return reading


def slug(name):
    """A SkyPilot task name as an experiment name: lowercase letters, digits and hyphens."""
    text = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", name.lower())).strip("-")
    return text[:NAME_MAX].strip("-")


def _candidate_problems(candidate, origins, doc, path, problems):
    """The model's own checks (and flag schemas), each at the line where the field was written."""
    try:
        candidate.full_clean(exclude=["name"], validate_unique=False)
    except ValidationError as exc:
        for key, messages in exc.message_dict.items():
            at_doc, at = origins.get(key) or (doc, path + (() if key == "__all__" else (key,)))
            for message in messages:
                problems.add(at_doc, at, message)


def _check_name(name, doc, path, problems):
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.add(doc, path, f"{name!r} is not a valid name. {NAME_HELP}")
        return False
    if name in RESERVED_NAMES:
        problems.add(doc, path, f"{name!r} is the name of a SkyDeck page: choose another name.")
        return False
    return True


def experiment_from_task(
    text,
    *,
    source="task.yaml",
    actor=None,
    name=None,
    backend="skypilot",
    desired_state=DesiredState.STOPPED,
    workdir=None,
    description="",
):
    """An unsaved, checked Experiment from a SkyPilot task YAML; ``FileInvalid`` (lines and fields) otherwise.

    ``name`` and ``workdir`` override the task's; a task with no name takes one from ``source``.
    """
    doc = read_yaml(text, source)
    problems = Problems()
    data = doc.data
    if data is None:
        problems.add(doc, (), "is empty: a SkyPilot task has at least a run.")
        problems.raise_if_any()
    if workdir and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "workdir"}  # the worker's own path replaces the task's
    reading = read_task(doc, (), data, problems)
    if workdir:
        reading.fields["workdir"] = workdir
    if isinstance(data, dict) and "command" not in reading.fields:
        problems.add(doc, ("run",), "is missing: SkyDeck runs a command.")
    problems.raise_if_any()
    _check_split(reading)
    if name:
        if not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
            problems.found.append(Problem(source, None, "name", f"{name!r} is not a name SkyDeck takes. {NAME_HELP}"))
    else:
        name = slug(reading.name or Path(source).stem)
        _check_name(name, doc, ("name",), problems)
    experiment = Experiment(
        name=name, backend=backend, description=description, desired_state=desired_state, **reading.fields
    )
    if actor is not None and not actor.may_use_backend(backend):
        problems.add(doc, (), "the local backend runs commands on the SkyDeck host: on this install only staff may.")
    _candidate_problems(experiment, reading.origins, doc, (), problems)
    problems.raise_if_any()
    return experiment


def import_task(actor, text, *, source="task.yaml", desired_state=DesiredState.STOPPED, **options):
    """Create the experiment a SkyPilot task YAML describes, through ``intent.create``; its Events name the file."""
    experiment = experiment_from_task(text, source=source, actor=actor, desired_state=desired_state, **options)
    return intent.create(
        as_file(actor, source),
        experiment,
        desired_state=desired_state,
        message=f"Imported from the SkyPilot task {source}",
    )


# --- experiment / job -> a SkyPilot task YAML ---------------------------------------------------------


def _autostop_of(minutes, infra, managed):
    if managed:
        return None  # a managed job's controller owns the cluster
    if minutes is None:
        return False
    return {"idle_minutes": minutes, "down": True} if infra_cannot_stop(infra) else minutes


def task_config(spec, name, autostop=None):
    """The task YAML (as a dict) of a LaunchSpec: what SkyDeck hands SkyPilot, in SkyPilot's own words."""
    config = {"name": name}
    resources = resources_kwargs(spec)
    if autostop is not None:
        resources["autostop"] = autostop
    if resources:
        config["resources"] = resources
    if spec.num_nodes != 1:
        config["num_nodes"] = spec.num_nodes
    if spec.workdir:
        config["workdir"] = spec.workdir
    if spec.envs:
        config["envs"] = {str(k): str(v) for k, v in spec.envs.items()}
    if spec.setup:
        config["setup"] = spec.setup
    config["run"] = spec.command
    return config


def _how_to_run(name, managed):
    if managed:
        return f"sky jobs launch -n {name} {name}.yaml"
    return f"sky launch -c {name} {name}.yaml"


def experiment_task(experiment):
    """The task SkyDeck would launch for the experiment's next run (its current spec)."""
    spec = launch_spec(experiment, 1)
    autostop = _autostop_of(experiment.idle_minutes, experiment.infra, experiment.managed)
    return task_config(spec, experiment.name, autostop)


def experiment_task_yaml(experiment):
    header = (
        f"# SkyPilot task of the SkyDeck experiment {experiment.name}: what SkyDeck launches for it.\n"
        f"# Run it with: {_how_to_run(experiment.name, experiment.managed)}\n"
    )
    return dump_yaml(experiment_task(experiment), header)


# What a Job's resources snapshot holds (LaunchSpec.resources()).
SNAPSHOT_KEYS = ("accelerators", "num_nodes", "cpus", "memory", "infra", "use_spot", "disk_size", "image_id", "managed")


def job_task(job):
    """The task of what one job ran: ``Job.command`` and its ``Job.resources`` snapshot.

    setup, envs and workdir are not kept per job: they are the experiment's current ones.
    """
    snapshot = job.resources or {}
    current = launch_spec(job.experiment, job.attempt)
    resources = {k: snapshot[k] if k in snapshot else getattr(current, k) for k in SNAPSHOT_KEYS}
    spec = dataclasses.replace(current, job_name=job.name, command=job.command, **resources)
    minutes = snapshot.get("autostop_minutes", current.autostop_minutes)
    return task_config(spec, job.name, _autostop_of(minutes, spec.infra, spec.managed))


def job_task_yaml(job):
    experiment = job.experiment
    lines = [
        f"# SkyPilot task of job {job.name} (attempt {job.attempt} of the SkyDeck experiment {experiment.name}): "
        "its command line and resources as they ran.",
    ]
    if not job.resources:
        lines.append("# Its resources were not recorded: these are the experiment's current ones.")
    if job.generation != experiment.generation:
        lines.append(
            f"# setup, envs and workdir are not kept per job: these are the experiment's current ones "
            f"(generation {experiment.generation}; the job ran generation {job.generation})."
        )
    lines.append(f"# Run it with: {_how_to_run(job.name, bool((job.resources or {}).get('managed')))}")
    return dump_yaml(job_task(job), "\n".join(lines) + "\n")


# --- skydeck.yaml: reading ---------------------------------------------------------------------------

# SkyDeck's own words for an experiment: the fields an entry may give, in the order an export writes them.
ENTRY_FIELDS = (
    "description",
    "command",
    "flags",
    "flag_style",
    "backend",
    "accelerators",
    "num_nodes",
    "cpus",
    "memory",
    "infra",
    "use_spot",
    "disk_size",
    "image_id",
    "workdir",
    "envs",
    "setup",
    "autostop_minutes",
    "keep_cluster_up",
    "managed",
    "restart_policy",
    "max_restarts",
    "max_cost",
    "max_runtime_minutes",
    "limit_action",
    "stall_minutes",
    "stall_action",
    "tags",
)
ALWAYS_WRITTEN = ("command", "backend")


def _whole_or_float(value):
    """A budget may be written 10 or 10.5 (strict mode takes no int for a float by itself)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _number_text(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be text or a number, e.g. 8 or 8+")
    return format_flag_value(value) if not isinstance(value, str) else value


DesiredName = Literal["RUNNING", "STOPPED", "TERMINATED"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ExperimentEntry(_Entry):
    name: str | None = None
    task: Any = None
    desired_state: DesiredName | None = None
    description: str = ""
    command: str = ""
    flags: dict[str, Any] = {}
    flag_style: Literal["plain", "dashdash"] = "plain"
    backend: Literal["skypilot", "local"] = "local"
    accelerators: str = ""
    num_nodes: int = Field(1, ge=1)
    cpus: Annotated[str, BeforeValidator(_number_text)] = ""
    memory: Annotated[str, BeforeValidator(_number_text)] = ""
    infra: str = ""
    use_spot: bool = False
    disk_size: int | None = Field(None, ge=1)
    image_id: str = ""
    workdir: str = ""
    envs: dict[str, Any] = {}
    setup: str = ""
    autostop_minutes: int | None = Field(None, ge=0)
    keep_cluster_up: bool = False
    managed: bool = False
    restart_policy: Literal["never", "on_failure", "always"] = "never"
    max_restarts: int = Field(3, ge=0)
    # Guardrails (docs/guardrails.md): a budget in $, a runtime limit per run, what to do at either,
    # and the stall watchdog.
    max_cost: Annotated[float, BeforeValidator(_whole_or_float)] | None = Field(None, ge=0)
    max_runtime_minutes: int | None = Field(None, ge=1)
    limit_action: Literal["STOPPED", "TERMINATED"] = "STOPPED"
    stall_minutes: int | None = Field(None, ge=0)
    stall_action: Literal["restart", "flag"] = "restart"
    tags: list[str] = []


class SweepEntry(_Entry):
    name: str
    description: str = ""
    base: str | None = None
    kind: Literal["grid", "random"] = "grid"
    parameters: dict[str, Any]
    samples: int | None = Field(None, ge=1)
    seed: int | None = None
    max_concurrent: int | None = Field(None, ge=1)
    max_cost: Annotated[float, BeforeValidator(_whole_or_float)] | None = Field(None, ge=0)
    limit_action: Literal["STOPPED", "TERMINATED"] = "STOPPED"
    desired_state: DesiredName | None = None


@dataclasses.dataclass
class WantedExperiment:
    name: str
    fields: dict  # every field of ENTRY_FIELDS: what the file says, else the task's, else the default
    desired_state: str | None  # None: leave it as it is (STOPPED for a new one)
    origins: dict
    doc: Doc
    path: tuple


@dataclasses.dataclass
class WantedSweep:
    name: str
    fields: dict  # base, kind, parameters, samples, seed, max_concurrent, description
    given: set
    desired_state: str | None
    doc: Doc
    path: tuple


@dataclasses.dataclass
class Wanted:
    """What a skydeck.yaml asks for."""

    source: str
    experiments: list
    sweeps: list


def _pydantic_problems(exc, doc, path, problems, known, what):
    for error in exc.errors():
        loc = path + tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = _unknown(error["loc"][-1], known, what)
        elif error["type"] == "missing":
            message = "is required."
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", error["msg"])) + "."
        else:
            message = error["msg"] + "."
        problems.add(doc, loc, message)


def _defaults():
    return {f: Experiment._meta.get_field(f).get_default() for f in ENTRY_FIELDS}


def _read_experiment(doc, path, data, problems, base_dir, read_task_file):
    if not isinstance(data, dict):
        problems.add(doc, path, "an experiment is a mapping (name, command, flags, …).")
        return None
    try:
        entry = ExperimentEntry.model_validate(data)
    except PydanticValidationError as exc:
        _pydantic_problems(exc, doc, path, problems, ExperimentEntry.model_fields, "a SkyDeck experiment")
        return None
    reading = Reading()
    if entry.task is not None:
        if isinstance(entry.task, str):
            task_doc = read_task_file(entry.task, doc, path + ("task",), problems)
            if task_doc is not None:
                reading = read_task(task_doc, (), task_doc.data, problems, base_dir=base_dir)
        else:
            reading = read_task(doc, path + ("task",), entry.task, problems, base_dir=base_dir)
        if "command" in reading.fields:
            _check_split(reading)
    fields = {**_defaults(), **reading.fields}
    origins = dict(reading.origins)
    for key in entry.model_fields_set & set(ENTRY_FIELDS):
        fields[key] = getattr(entry, key)
        origins[key] = (doc, path + (key,))
    if "backend" not in entry.model_fields_set:
        fields["backend"] = Experiment._meta.get_field("backend").get_default()
    if "workdir" in entry.model_fields_set and fields["workdir"]:
        fields["workdir"] = _resolve_workdir(fields["workdir"], base_dir, doc, path + ("workdir",), problems)
    for key, value in (fields["flags"] or {}).items():
        try:
            validate_flag_key(key)
            validate_flag_value(key, value)
        except ValidationError as exc:
            where = origins["flags"]
            problems.add(where[0], where[1] + ((key,) if where[1][-1:] == ("flags",) else ()), exc.messages[0])
    for key, value in (fields["envs"] or {}).items():
        if not ENV_NAME_RE.fullmatch(key):
            problems.add(doc, path + ("envs", key), f"{key!r} is not an environment variable name.")
        elif not isinstance(value, (str, int, float, bool)):
            problems.add(doc, path + ("envs", key), "must be text or a number.")
    if not fields["command"].strip():
        problems.add(doc, path + ("command",), "is required (or a task with a run).")
    name = entry.name if entry.name is not None else reading.name
    if name is None:
        problems.add(doc, path + ("name",), "is required (or a task with a name).")
        return None
    if not _check_name(name, doc, path + ("name",), problems):
        return None
    return WantedExperiment(name, fields, entry.desired_state, origins, doc, path)


def _read_sweep(doc, path, data, problems):
    if not isinstance(data, dict):
        problems.add(doc, path, "a sweep is a mapping (name, base, kind, parameters, …).")
        return None
    try:
        entry = SweepEntry.model_validate(data)
    except PydanticValidationError as exc:
        _pydantic_problems(exc, doc, path, problems, SweepEntry.model_fields, "a SkyDeck sweep")
        return None
    if not _check_name(entry.name, doc, path + ("name",), problems):
        return None
    try:
        validate_sweep(entry.kind, entry.parameters, entry.samples)
    except ValidationError as exc:
        for key, messages in exc.message_dict.items():
            for message in messages:
                problems.add(doc, path + (key,), message)
        return None
    fields = entry.model_dump(exclude={"name", "desired_state"})
    given = entry.model_fields_set - {"name", "desired_state"}
    return WantedSweep(entry.name, fields, given, entry.desired_state, doc, path)


def read_file(text, *, source="skydeck.yaml", base_dir=None):
    """A skydeck.yaml as ``Wanted``, or ``FileInvalid`` naming the line and field of every problem.

    ``base_dir`` is the file's folder: relative task files and workdirs are read from there. Without it
    (a file sent to the API), a task must be written inline and a workdir must be absolute.
    """
    doc = read_yaml(text, source)
    problems = Problems()
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        problems.add(doc, (), "a SkyDeck file is a mapping with experiments and sweeps.")
        problems.raise_if_any()
    for key in data:
        if key not in ("version", "experiments", "sweeps"):
            hint = ""
            if key in ("run", "resources", "setup"):
                hint = (
                    " This looks like a SkyPilot task: import it, or name it from an experiment of a skydeck.yaml "
                    "(task: path/to/task.yaml)."
                )
            problems.add(doc, (key,), _unknown(key, ("version", "experiments", "sweeps"), "a SkyDeck file") + hint)
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        problems.add(doc, ("version",), f"this SkyDeck reads version {FORMAT_VERSION} of the file.")

    def read_task_file(name, at_doc, at_path, problems):
        if base_dir is None:
            problems.add(
                at_doc, at_path, "a task file can be read only by manage.py apply: write the task inline here."
            )
            return None
        path = Path(base_dir) / name
        try:
            content = path.read_bytes()
        except OSError as exc:
            problems.add(at_doc, at_path, f"cannot read the task file {name}: {exc.strerror or exc}.")
            return None
        try:
            return read_yaml(content, name)
        except FileInvalid as exc:
            problems.found.extend(exc.problems)
            return None

    def entries(key):
        items = data.get(key)
        if items is not None and not isinstance(items, list):
            problems.add(doc, (key,), f"{key} is a list (each item starting with -).")
            items = None
        return list(enumerate(items or []))

    wanted = Wanted(source, [], [])
    for i, item in entries("experiments"):
        wanted.experiments.append(_read_experiment(doc, ("experiments", i), item, problems, base_dir, read_task_file))
    for i, item in entries("sweeps"):
        wanted.sweeps.append(_read_sweep(doc, ("sweeps", i), item, problems))
    for found in (wanted.experiments, wanted.sweeps):
        seen = set()
        for entry in found:
            if entry is not None and entry.name in seen:
                problems.add(doc, entry.path + ("name",), f"{entry.name!r} is named twice in the file.")
            elif entry is not None:
                seen.add(entry.name)
    problems.raise_if_any()
    wanted.experiments = [e for e in wanted.experiments if e is not None]
    wanted.sweeps = [s for s in wanted.sweeps if s is not None]
    return wanted


# --- skydeck.yaml: the plan ----------------------------------------------------------------------------

ACTIONS = ("create", "update", "state", "delete", "unchanged", "refused")
ACTION_WORDS = {
    "create": "to create",
    "update": "to update",
    "state": "to change desired state",
    "delete": "to delete",
    "unchanged": "unchanged",
    "refused": "refused",
}


@dataclasses.dataclass
class Row:
    """One line of a plan: what happens to one experiment or sweep, and why."""

    kind: str  # "experiment" or "sweep"
    name: str
    action: str  # one of ACTIONS
    changes: list = dataclasses.field(default_factory=list)  # [(field, old, new)]
    desired: tuple | None = None  # (from, to)
    message: str = ""
    line: int | None = None
    refusal: str = ""  # why a refused row is: "permission" (403) or "conflict" (409)
    # What apply needs (not shown).
    todo: dict = dataclasses.field(default_factory=dict, repr=False)

    def as_dict(self):
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "changes": [{"field": f, "old": old, "new": new} for f, old, new in self.changes],
            "desired_state": {"from": self.desired[0], "to": self.desired[1]} if self.desired else None,
            "message": self.message,
            "line": self.line,
            "refusal": self.refusal or None,
        }


@dataclasses.dataclass
class Plan:
    source: str
    rows: list
    prune: bool = False

    def count(self, action):
        return sum(1 for r in self.rows if r.action == action)

    @property
    def summary(self):
        return {action: self.count(action) for action in ACTIONS}

    @property
    def refused(self):
        return [r for r in self.rows if r.action == "refused"]

    @property
    def changes(self):
        return [r for r in self.rows if r.action not in ("unchanged", "refused")]

    def summary_text(self):
        parts = [f"{n} {ACTION_WORDS[a]}" for a, n in self.summary.items() if n]
        return ", ".join(parts) + "." if parts else "Nothing in the file."


def _same(a, b):
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _refusal(thing):
    owner = getattr(thing, "owner", None)
    whose = f" (its owner is {owner.get_username()})" if owner is not None else ""
    return f"you may not change it{whose}: only its owner, its group and staff may."


def _active_jobs(ids):
    found = {}
    for job in Job.objects.filter(experiment_id__in=list(ids), status__in=ACTIVE_JOB_STATUSES).only(
        "experiment_id", "attempt", "status"
    ):
        found[job.experiment_id] = job
    return found


def _plan_experiment(wanted, current, actor, problems):
    line = wanted.doc.line(wanted.path)
    candidate = Experiment(name=wanted.name, **wanted.fields)
    _candidate_problems(candidate, wanted.origins, wanted.doc, wanted.path, problems)
    if current is None:
        desired = wanted.desired_state or DesiredState.STOPPED
        row = Row("experiment", wanted.name, "create", line=line, todo={"candidate": candidate})
        row.message = f"desired {desired}"
        row.todo["desired_state"] = desired
        if not actor.may_use_backend(candidate.backend):
            row.action, row.refusal = "refused", "permission"
            row.message = "the local backend is for staff only on this install."
        return row
    changes = [
        (f, getattr(current, f), getattr(candidate, f))
        for f in ENTRY_FIELDS
        if not _same(getattr(current, f), getattr(candidate, f))
    ]
    desired = wanted.desired_state if wanted.desired_state not in (None, current.desired_state) else None
    row = Row("experiment", wanted.name, "unchanged", changes=changes, line=line, todo={"experiment": current})
    if desired:
        row.desired = (current.desired_state, desired)
    if changes:
        row.action = "update"
    elif desired:
        row.action = "state"
    if row.action != "unchanged":
        if not actor.may_change(current):
            row.action, row.refusal, row.message = "refused", "permission", _refusal(current)
        elif any(f == "backend" for f, _, _ in changes) and not actor.may_use_backend(candidate.backend):
            row.action, row.refusal = "refused", "permission"
            row.message = "the local backend is for staff only on this install."
        row.todo["changes"] = {f: new for f, _, new in changes}
        row.todo["desired_state"] = desired
    return row


SWEEP_COMPARED = ("kind", "parameters", "samples", "seed", "max_concurrent", "max_cost", "limit_action", "description")


def _plan_sweep(wanted, current, actor, bases, problems):
    line = wanted.doc.line(wanted.path)
    fields = wanted.fields
    if current is None:
        base_name = fields.get("base")
        base = bases.get(base_name) if base_name else None
        if base is None:
            problems.add(
                wanted.doc,
                wanted.path + ("base",),
                f"no experiment named {base_name!r} here or in the file."
                if base_name
                else "is required to create the sweep (the experiment it is made from).",
            )
            return None
        try:
            children = sweeps.plan_children(
                base, fields["kind"], fields["parameters"], fields["samples"], fields["seed"]
            )
        except ValidationError as exc:
            problems.add(wanted.doc, wanted.path + ("parameters",), "; ".join(exc.messages))
            return None
        for child, values in children:
            _, errors, _ = FlagSchema.objects.check_flags({**(base.flags or {}), **values})
            for message in errors.values():
                problems.add(wanted.doc, wanted.path + ("parameters",), f"{child}: {message}")
        desired = wanted.desired_state or DesiredState.STOPPED
        names = [c for c, _ in children]
        shown = ", ".join(names[:5]) + ("…" if len(names) > 5 else "")
        return Row(
            "sweep",
            wanted.name,
            "create",
            message=f"from {base.name}: {len(names)} experiments ({shown}), desired {desired}",
            line=line,
            todo={"base": base.name, "desired_state": desired, "wanted": wanted},
        )
    compared = [f for f in SWEEP_COMPARED if f in wanted.given or f in ("kind", "parameters")]
    if fields["kind"] != "random":
        compared = [f for f in compared if f not in ("samples", "seed")]
    changes = [(f, getattr(current, f), fields[f]) for f in compared if not _same(getattr(current, f), fields[f])]
    if "base" in wanted.given and (current.base.name if current.base else None) != fields["base"]:
        changes.append(("base", current.base.name if current.base else None, fields["base"]))
    row = Row("sweep", wanted.name, "unchanged", changes=changes, line=line, todo={"sweep": current})
    if changes:
        row.action, row.refusal = "refused", "conflict"
        row.message = "a sweep cannot be changed once made: give the new one another name."
        return row
    if wanted.desired_state:
        children = list(current.experiments.select_related("owner").exclude(desired_state=wanted.desired_state))
        if children:
            total = current.experiments.count()
            before = sorted({c.desired_state for c in children})
            row.action = "state"
            row.desired = ("/".join(before), wanted.desired_state)
            row.message = f"{len(children)} of {total} experiments"
            row.todo.update(children=children, desired_state=wanted.desired_state)
            refused = [c.name for c in children if not actor.may_change(c)]
            if refused:
                row.action, row.refusal = "refused", "permission"
                row.message = f"you may not change {', '.join(refused[:10])}: only the owner, its group and staff may."
    return row


def plan(wanted, actor, *, prune=False):
    """Compare what the file wants with the database: one Row per experiment and sweep, nothing written.

    ``FileInvalid`` when the model refuses a value (the field's line is named). Rows the actor may not
    carry out are "refused"; with ``prune``, experiments the file does not name (among those the actor
    may change, and not of a sweep the file names) are deleted, except those with an active job.
    """
    problems = Problems()
    names = [w.name for w in wanted.experiments]
    current = {e.name: e for e in Experiment.objects.select_related("owner").filter(name__in=names)}
    rows = [_plan_experiment(w, current.get(w.name), actor, problems) for w in wanted.experiments]
    bases = dict(current)
    bases.update({r.name: r.todo["candidate"] for r in rows if r.action == "create"})
    missing = {w.fields.get("base") for w in wanted.sweeps} - set(bases) - {None}
    bases.update({e.name: e for e in Experiment.objects.filter(name__in=missing)})
    existing_sweeps = {
        s.name: s for s in Sweep.objects.select_related("base").filter(name__in=[w.name for w in wanted.sweeps])
    }
    for w in wanted.sweeps:
        row = _plan_sweep(w, existing_sweeps.get(w.name), actor, bases, problems)
        if row is not None:
            rows.append(row)
    problems.raise_if_any()
    if prune:
        if not wanted.experiments and not wanted.sweeps:
            problems.add(
                Doc(wanted.source, None, {}), (), "names no experiment: pruning with it would delete every one."
            )
            problems.raise_if_any()
        bases_named = {w.fields.get("base") for w in wanted.sweeps} - {None}
        strays = (
            Experiment.objects.select_related("owner")
            .exclude(name__in=[*names, *bases_named])
            .exclude(sweep__name__in=[w.name for w in wanted.sweeps])
            .order_by("name")
        )
        strays = [e for e in strays if actor.may_change(e)]
        active = _active_jobs(e.pk for e in strays)
        for experiment in strays:
            row = Row("experiment", experiment.name, "delete", todo={"experiment": experiment})
            job = active.get(experiment.pk)
            if job is not None:
                row.action, row.refusal = "refused", "conflict"
                row.message = (
                    f"not in the file, but attempt {job.attempt} is {job.status}: an experiment with an active job "
                    "is never deleted. Set it STOPPED or TERMINATED first, or apply without --prune."
                )
            rows.append(row)
    return Plan(wanted.source, rows, prune)


def check_launchable(plan):
    """Ask each backend to check what the plan creates or changes, as a launch would.

    For SkyPilot that is its own ``sky.Task`` and ``sky.Resources``. Only ``manage.py apply`` asks:
    the check imports SkyPilot, which the web process never does.
    """
    problems = []
    for row in plan.rows:
        if row.kind != "experiment" or row.action not in ("create", "update"):
            continue
        if row.action == "create":
            candidate = row.todo["candidate"]
        else:
            candidate = intent.copy_of(row.todo["experiment"], name=row.name, **row.todo["changes"])
        if candidate.backend not in enabled_backends():
            problems.append(Problem(plan.source, row.line, row.name, f"the {candidate.backend} backend is off here."))
            continue
        try:
            get_backend(candidate.backend).validate(launch_spec(candidate, 1))
        except BackendError as exc:
            problems.append(Problem(plan.source, row.line, row.name, f"{candidate.backend} refuses it: {exc}"))
        except ValidationError as exc:
            problems.append(Problem(plan.source, row.line, row.name, "; ".join(exc.messages)))
    if problems:
        raise FileInvalid(problems)


# --- skydeck.yaml: applying ------------------------------------------------------------------------------


@dataclasses.dataclass
class FileActor(intent.Actor):
    """An Actor whose Events name the file the change came from (``data["file"]``)."""

    file: str = ""

    def record(self, experiment, kind, message, **kwargs):
        kwargs["data"] = {**(kwargs.get("data") or {}), "file": self.file}
        return super().record(experiment, kind, message, **kwargs)


def as_file(actor, file):
    """``actor``, acting from ``file``: the same user, surface and rights."""
    return FileActor(actor.user, actor.source, file=file)


class Refused(PermissionDenied):
    """The plan holds rows the actor may not carry out: nothing was applied."""

    def __init__(self, plan):
        self.plan = plan
        rows = plan.refused
        names = ", ".join(f"{r.name} ({r.message})" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        super().__init__(f"Nothing applied: {len(rows)} refused: {names}{more}")


class ApplyFailed(Exception):
    """A change the plan allowed was refused while applying (someone changed things meanwhile): all rolled back."""


def apply(plan, actor, *, restart=False):
    """Carry the plan out through ``intent``, in one transaction: all of it, or nothing.

    Returns the rows that changed something. ``restart``: an experiment whose spec changed while a job
    runs is restarted with the new spec (otherwise that job keeps the old spec, "out of date").
    """
    if plan.refused:
        raise Refused(plan)
    actor = as_file(actor, plan.source)
    done = []
    try:
        with transaction.atomic(), intent.batched():
            for row in plan.rows:
                if row.action in ("unchanged", "delete"):
                    continue
                if row.kind == "experiment":
                    _apply_experiment(row, actor, restart, plan.source)
                else:
                    _apply_sweep(row, actor)
                done.append(row)
            doomed = [r for r in plan.rows if r.action == "delete"]
            if doomed:
                _, kept = intent.delete(actor, [r.todo["experiment"] for r in doomed])
                if kept:
                    raise ApplyFailed(
                        f"{', '.join(kept)} got an active job meanwhile and cannot be deleted: nothing applied."
                    )
                done.extend(doomed)
    except (ValidationError, PermissionDenied) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise ApplyFailed(f"Refused while applying, nothing applied: {text}") from exc
    return done


def _apply_experiment(row, actor, restart, source):
    if row.action == "create":
        intent.create(
            actor, row.todo["candidate"], desired_state=row.todo["desired_state"], message=f"Created from {source}"
        )
        return
    experiment = row.todo["experiment"]
    changes = dict(row.todo.get("changes") or {})
    if row.todo.get("desired_state"):
        changes["desired_state"] = row.todo["desired_state"]
    intent.edit(actor, experiment, changes, restart=restart)


def _apply_sweep(row, actor):
    if row.action == "create":
        fields = dict(row.todo)
        wanted = row.todo["wanted"]
        base = Experiment.objects.get(name=fields["base"])
        sweeps.create_sweep(
            actor,
            name=row.name,
            base=base,
            kind=wanted.fields["kind"],
            parameters=wanted.fields["parameters"],
            samples=wanted.fields["samples"],
            seed=wanted.fields["seed"],
            max_concurrent=wanted.fields["max_concurrent"],
            max_cost=wanted.fields["max_cost"],
            limit_action=wanted.fields["limit_action"],
            desired_state=fields["desired_state"],
            description=wanted.fields["description"],
        )
        return
    intent.set_desired_state_many(actor, row.todo["children"], row.todo["desired_state"])


def _short(value, limit=70):
    if isinstance(value, str) and "\n" in value.strip():
        return f"({value.strip().count(chr(10)) + 1} lines)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


MARKS = {"create": "+", "update": "~", "state": ">", "delete": "-", "unchanged": "=", "refused": "!"}


def format_plan(plan):
    """The plan as lines of text, as ``manage.py apply`` prints it."""
    lines = []
    for row in plan.rows:
        head = f"  {MARKS[row.action]} {row.action:<9} {row.kind} {row.name}"
        if row.message:
            head += f": {row.message}"
        lines.append(head)
        for name, old, new in row.changes:
            lines.append(f"        {name}: {_short(old)} → {_short(new)}")
        if row.desired:
            lines.append(f"        desired state: {row.desired[0]} → {row.desired[1]}")
    lines.append(plan.summary_text())
    return lines


# --- export ------------------------------------------------------------------------------------------------


def _entry_of(experiment):
    entry = {"name": experiment.name}
    defaults = _defaults()
    for f in ENTRY_FIELDS:
        value = getattr(experiment, f)
        if f in ("flags", "envs") and isinstance(value, dict):
            value = dict(sorted(value.items()))
        if f in ALWAYS_WRITTEN or not _same(value, defaults[f]):
            entry[f] = value
    entry["desired_state"] = experiment.desired_state
    return entry


def _sweep_entry(sweep, children):
    entry = {"name": sweep.name}
    if sweep.description:
        entry["description"] = sweep.description
    if sweep.base is not None:
        entry["base"] = sweep.base.name
    entry["kind"] = sweep.kind
    entry["parameters"] = dict(sorted(sweep.parameters.items()))
    if sweep.kind == Sweep.Kind.RANDOM:
        entry["samples"], entry["seed"] = sweep.samples, sweep.seed
    if sweep.max_concurrent:
        entry["max_concurrent"] = sweep.max_concurrent
    if sweep.max_cost is not None:
        entry["max_cost"], entry["limit_action"] = sweep.max_cost, sweep.limit_action
    states = {c.desired_state for c in children}
    if len(states) == 1:
        entry["desired_state"] = states.pop()
    return entry


def export_data(experiments):
    """The skydeck.yaml (as a dict) of these experiments.

    A sweep is written as a sweep when all its experiments are among them (and its base is, or is gone);
    otherwise its experiments are written one by one.
    """
    chosen = {e.pk: e for e in experiments}
    sweep_ids = {e.sweep_id for e in chosen.values() if e.sweep_id}
    whole = []
    for sweep in Sweep.objects.filter(pk__in=sweep_ids).select_related("base").order_by("name"):
        children = list(sweep.experiments.all())
        if all(c.pk in chosen for c in children) and (sweep.base is None or sweep.base_id in chosen):
            whole.append((sweep, children))
    in_sweeps = {c.pk for _, children in whole for c in children}
    data = {"version": FORMAT_VERSION}
    rows = sorted((e for pk, e in chosen.items() if pk not in in_sweeps), key=lambda e: e.name)
    if rows:
        data["experiments"] = [_entry_of(e) for e in rows]
    if whole:
        data["sweeps"] = [_sweep_entry(s, children) for s, children in whole]
    return data


def export_file(experiments):
    """A skydeck.yaml of these experiments (and their whole sweeps), sorted by name."""
    header = (
        "# SkyDeck experiments and sweeps, exported from SkyDeck.\n"
        "# Check what applying it would change: manage.py apply -f skydeck.yaml --dry-run\n"
    )
    return dump_yaml(export_data(experiments), header)


# --- the same kind of plan for a bulk action ---------------------------------------------------------------


@dataclasses.dataclass
class StateRow:
    """What setting one experiment's desired state would do."""

    experiment: Experiment
    action: str  # launch, stop, tear_down, already, refused
    detail: str


STATE_VERBS = {
    "launch": "will launch",
    "stop": "will stop",
    "tear_down": "will be torn down",
    "already": "already so",
    "refused": "refused",
}


def plan_desired_state(experiments, state, actor=None):
    """For each experiment, what setting its desired state to ``state`` would do: nothing is written.

    ``action`` is ``launch``, ``stop``, ``tear_down``, ``already`` (it is so already) or ``refused``
    (``actor`` may not change it). Two queries, whatever the number of experiments.
    """
    if state not in DesiredState.values:
        raise ValidationError({"desired_state": f"{state!r} is not a desired state."})
    experiments = list(experiments)
    active = _active_jobs(e.pk for e in experiments)
    rows = []
    for e in experiments:
        job = active.get(e.pk)
        running = f"attempt {job.attempt} ({job.status})" if job else ""
        if actor is not None and not actor.may_change(e):
            rows.append(StateRow(e, "refused", "you may not change it: only its owner, its group and staff may."))
        elif e.desired_state == state:
            detail = f"already {state}"
            if e.run_finished:
                detail += f"; run {e.run_number} finished ({e.get_phase_display().lower()}): Restart runs it again"
            rows.append(StateRow(e, "already", detail))
        elif state == DesiredState.RUNNING:
            if e.phase == Phase.STOPPED:
                detail = f"starts the stopped cluster {e.cluster_name} and runs it (run {e.run_number + 1})"
            else:
                detail = f"launches run {e.run_number + 1}"
            rows.append(StateRow(e, "launch", detail))
        elif state == DesiredState.STOPPED:
            cancel = f"cancels {running}, " if job else ""
            if e.backend == "skypilot" and infra_cannot_stop(e.infra):
                detail = f"{cancel}keeps the cluster up: {e.infra} cannot stop one (set TERMINATED to tear it down)"
            elif e.phase == Phase.TERMINATED:
                detail = f"{cancel}nothing to stop: its cluster is already torn down"
            else:
                detail = f"{cancel}stops {e.cluster_name} (its disk is kept)"
            rows.append(StateRow(e, "stop", detail[0].upper() + detail[1:]))
        else:
            cancel = f"cancels {running}, " if job else ""
            if e.phase == Phase.TERMINATED:
                detail = f"{cancel}nothing to tear down: its cluster is already gone"
            else:
                detail = f"{cancel}tears down {e.cluster_name} (its disk is lost)"
            rows.append(StateRow(e, "tear_down", detail[0].upper() + detail[1:]))
    return rows


def summarize_state_plan(rows):
    """``[(action, verb, count)]`` for the actions that occur, in a fixed order."""
    counts = dict.fromkeys(STATE_VERBS, 0)
    for row in rows:
        counts[row.action] += 1
    return [(a, STATE_VERBS[a], n) for a, n in counts.items() if n]


__all__ = [
    "ApplyFailed",
    "FileActor",
    "FileInvalid",
    "Plan",
    "Problem",
    "Refused",
    "Row",
    "StateRow",
    "apply",
    "as_file",
    "check_launchable",
    "experiment_from_task",
    "experiment_task_yaml",
    "export_file",
    "format_plan",
    "import_task",
    "job_task_yaml",
    "plan",
    "plan_desired_state",
    "read_file",
    "read_yaml",
    "split_flags",
]
