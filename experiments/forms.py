"""The experiment form and its flag editor.

The flag editor posts one group of inputs per row, named ``flag-<uid>-key``,
``flag-<uid>-type`` and ``flag-<uid>-value``; rows keep the order in which the
browser sent them. A boolean row's value is a checkbox, so an unchecked one is
simply absent.
"""

import re
import secrets
from dataclasses import dataclass, field

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q

from clusters.models import Backend

from .flags import validate_against_schema
from .launch import build_command, validate_flag_key
from .models import SPEC_FIELDS, TAG_RE, DesiredState, Experiment, FlagSchema, Phase

FLAG_INPUT_RE = re.compile(r"^flag-([A-Za-z0-9_]{1,32})-(key|type|value)$")
FLAG_TYPES = [("string", "Text"), ("integer", "Integer"), ("float", "Float"), ("boolean", "Boolean"), ("choice", "Choice")]
MAX_FLAGS = 500


def new_uid():
    return secrets.token_hex(4)


def type_of(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def schemas_for(paths):
    """Known schemas by path (first namespace wins), in one query."""
    paths = [p for p in paths if p]
    found = {}
    if paths:
        for schema in FlagSchema.objects.filter(path__in=paths).order_by("namespace"):
            found.setdefault(schema.path, schema)
    return found


@dataclass
class FlagRow:
    uid: str
    key: str = ""
    type: str = "string"
    raw: str = ""  # the value as typed; for booleans "true" or ""
    error: str = ""
    unknown: bool = False
    schema: FlagSchema | None = None
    choices: list = field(default_factory=list)

    @property
    def is_blank(self):
        return not self.key.strip() and not self.raw.strip()

    @property
    def checked(self):
        return self.raw in {"true", "on", "1", "True"}

    def coerce(self):
        """The typed value, or a ValueError with a message."""
        raw = self.raw.strip() if self.type != "string" else self.raw
        if self.type == "boolean":
            return self.checked
        if self.type == "integer":
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{self.key}: {raw!r} is not a whole number.") from None
        if self.type == "float":
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{self.key}: {raw!r} is not a number.") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{self.key}: {raw!r} is not a finite number.")
            return value
        if self.type == "choice":
            options = self.schema.choices if self.schema else []
            for option in options:
                if str(option) == raw or (isinstance(option, bool) and raw == str(option).lower()):
                    return option
            if options:
                raise ValueError(f"{self.key}: choose one of {', '.join(map(str, options))}.")
        return self.raw


def describe_schema(row, schema):
    """Fit a row's widget to what the schema knows about its path."""
    row.schema = schema
    row.unknown = schema is None
    if schema is not None and schema.type == FlagSchema.Type.CHOICE and schema.choices:
        row.type = "choice"
    if row.type == "choice":
        options = schema.choices if schema is not None else []
        row.choices = [(str(o).lower() if isinstance(o, bool) else str(o)) for o in options]
    return row


def rows_from_flags(flags):
    schemas = schemas_for(flags)
    rows = []
    for key in sorted(flags):
        value = flags[key]
        raw = ("true" if value else "") if isinstance(value, bool) else str(value)
        rows.append(describe_schema(FlagRow(uid=new_uid(), key=key, type=type_of(value), raw=raw), schemas.get(key)))
    return rows


def rows_from_data(data):
    """The flag rows a form posted, in the order they were sent."""
    rows = {}
    for name in data:
        match = FLAG_INPUT_RE.match(name)
        if not match:
            continue
        uid, part = match.groups()
        row = rows.setdefault(uid, FlagRow(uid=uid))
        value = data.get(name, "")
        if part == "key":
            row.key = value.strip()
        elif part == "type":
            row.type = value if value in dict(FLAG_TYPES) else "string"
        else:
            row.raw = value
        if len(rows) > MAX_FLAGS:
            break
    rows = [r for r in rows.values() if not r.is_blank]
    schemas = schemas_for([r.key for r in rows])
    return [describe_schema(r, schemas.get(r.key)) for r in rows]


def parse_flags(rows):
    """Coerce and validate the rows: (flags, had_errors). Errors are set on the rows."""
    flags = {}
    for row in rows:
        if not row.key:
            row.error = "Give this flag a name."
            continue
        try:
            validate_flag_key(row.key)
        except ValidationError as exc:
            row.error = exc.messages[0]
            continue
        if row.key in flags:
            row.error = f"{row.key} is set twice."
            continue
        try:
            flags[row.key] = row.coerce()
        except ValueError as exc:
            row.error = str(exc)
    if any(r.error for r in rows):
        return flags, True
    try:
        coerced, errors, unknown = validate_against_schema(flags)
    except ValidationError as exc:
        for row in rows:
            row.error = row.error or "; ".join(exc.messages)
        return flags, True
    unknown = set(unknown or ())
    for row in rows:
        row.unknown = row.key in unknown or row.schema is None
        if row.key in (errors or {}):
            row.error = errors[row.key]
    return coerced, bool(errors)


class TagsField(forms.CharField):
    """Tags typed as a comma- or space-separated list."""

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(value)
        return value

    def to_python(self, value):
        text = super().to_python(value) or ""
        tags = []
        for tag in re.split(r"[,\s]+", text):
            if tag and tag not in tags:
                tags.append(tag)
        return tags

    def validate(self, value):
        for tag in value:
            if not TAG_RE.match(tag):
                raise ValidationError(f"Tag {tag!r} is not valid: use letters, digits and _ . : / - (at most 50).")


class EnvsField(forms.CharField):
    """Environment variables, one NAME=value a line."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def prepare_value(self, value):
        if isinstance(value, dict):
            return "\n".join(f"{k}={v}" for k, v in value.items())
        return value

    def to_python(self, value):
        text = super().to_python(value) or ""
        envs = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, val = line.partition("=")
            name = name.strip()
            if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValidationError(f"Line {number}: write NAME=value, with a NAME of letters, digits and _.")
            envs[name] = val
        return envs


class ExperimentForm(forms.ModelForm):
    tags = TagsField(required=False, help_text="Separated by commas or spaces, e.g. baseline, lr-sweep")
    envs = EnvsField(required=False, label="Environment variables", help_text="One NAME=value a line")
    restart_now = forms.BooleanField(
        required=False, label="Restart now to apply the change", help_text="Cancels the running job and starts the new spec"
    )

    class Meta:
        model = Experiment
        fields = [
            "name", "description", "command", "flag_style", "backend", "accelerators", "num_nodes", "cpus",
            "memory", "infra", "use_spot", "disk_size", "image_id", "managed", "autostop_minutes", "workdir",
            "setup", "envs", "restart_policy", "max_restarts", "tags", "desired_state",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "command": forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"}),
            "setup": forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"}),
        }
        labels = {"flag_style": "Flag style", "use_spot": "Use spot instances", "autostop_minutes": "Autostop (idle minutes)",
                  "disk_size": "Disk size (GiB)", "image_id": "Image", "num_nodes": "Nodes", "cpus": "CPUs"}

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.editing = self.instance.pk is not None
        enabled = set(settings.SKYDECK_BACKENDS)
        self.fields["backend"].choices = [c for c in Backend.choices if c[0] in enabled] or Backend.choices
        self.fields["name"].help_text = "Lowercase letters, digits and hyphens; the cluster is named sd- followed by it."
        if self.editing:
            # The name names the cluster and jobs: renaming would orphan them.
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "The name cannot change: it names the cluster and its jobs."
        if self.is_bound:
            self.flag_rows = rows_from_data(self.data)
        else:
            self.flag_rows = rows_from_flags(self.initial.get("flags") or self.instance.flags or {})
        self.flag_errors = False
        self.flags = {}
        self.original_spec = {f: getattr(self.instance, f) for f in SPEC_FIELDS}

    @property
    def running_job(self):
        return self.instance.active_job if self.editing else None

    def clean(self):
        cleaned = super().clean()
        self.flags, self.flag_errors = parse_flags(self.flag_rows)
        if self.flag_errors:
            raise ValidationError("Some flags are not valid: see the marked rows.", code="flags")
        command = cleaned.get("command")
        if command is not None:
            try:
                build_command(command, self.flags, cleaned.get("flag_style") or "plain")
            except ValidationError as exc:
                self.add_error("command", exc)
        if cleaned.get("managed") and cleaned.get("backend") == Backend.LOCAL:
            self.add_error("managed", "Managed jobs need the SkyPilot backend.")
        if cleaned.get("backend") == Backend.LOCAL and (cleaned.get("num_nodes") or 1) != 1:
            self.add_error("num_nodes", "The local backend runs on one node.")
        return cleaned

    def _post_clean(self):
        self.instance.flags = self.flags
        super()._post_clean()

    def changed_spec_fields(self):
        """Spec fields whose value differs from what was loaded (after a valid form)."""
        return [f for f in SPEC_FIELDS if getattr(self.instance, f) != self.original_spec[f]]


def preview_command(data):
    """The command line a half-filled form would run, or (None, reason)."""
    rows = rows_from_data(data)
    flags, had_errors = parse_flags(rows)
    if had_errors:
        return None, "Fix the flags marked in red to see the command."
    style = data.get("flag_style") or "plain"
    try:
        return build_command(data.get("command", ""), flags, style), ""
    except ValidationError as exc:
        return None, "; ".join(exc.messages)



class ExperimentFilterForm(forms.Form):
    """The list's search, filters, sort and page size, all in the URL."""

    SORTS = {
        "-created": ("-created_at", "-id"),
        "created": ("created_at", "id"),
        "name": ("name",),
        "-name": ("-name",),
        "-updated": ("-updated_at", "-id"),
        "state": ("phase", "name"),
        "desired": ("desired_state", "name"),
        "backend": ("backend", "name"),
    }
    SORT_CHOICES = [
        ("-created", "Newest first"), ("created", "Oldest first"), ("name", "Name A–Z"), ("-name", "Name Z–A"),
        ("-updated", "Recently changed"), ("state", "State"), ("desired", "Desired state"), ("backend", "Backend"),
    ]
    PAGE_SIZES = [25, 50, 100, 200]

    q = forms.CharField(required=False, label="Search", max_length=200)
    state = forms.ChoiceField(required=False, label="State", choices=[("", "Any state"), *Phase.choices])
    desired = forms.ChoiceField(required=False, label="Desired", choices=[("", "Any desired state"), *DesiredState.choices])
    backend = forms.ChoiceField(required=False, label="Backend", choices=[("", "Any backend"), *Backend.choices])
    tag = forms.CharField(required=False, label="Tag", max_length=50)
    starred = forms.BooleanField(required=False, label="Starred only")
    sort = forms.ChoiceField(required=False, label="Sort", choices=SORT_CHOICES, initial="-created")
    per_page = forms.TypedChoiceField(
        required=False, label="Rows per page", coerce=int, empty_value=50, initial=50,
        choices=[(n, str(n)) for n in PAGE_SIZES],
    )


    def values(self):
        """The cleaned filters; invalid values are ignored, not errors (a shared URL must open)."""
        if not self.is_bound:
            return {}
        self.is_valid()
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "", False)}

    def filter(self, queryset):
        v = self.values()
        if v.get("q"):
            q = v["q"]
            queryset = queryset.filter(
                Q(name__icontains=q) | Q(description__icontains=q) | Q(command__icontains=q)
            )
        if v.get("state"):
            queryset = queryset.filter(phase=v["state"])
        if v.get("desired"):
            queryset = queryset.filter(desired_state=v["desired"])
        if v.get("backend"):
            queryset = queryset.filter(backend=v["backend"])
        if v.get("tag"):
            queryset = queryset.tagged(v["tag"])
        if v.get("starred"):
            queryset = queryset.filter(starred=True)
        return queryset.order_by(*self.SORTS.get(v.get("sort") or "-created", self.SORTS["-created"]))

    @property
    def page_size(self):
        return self.values().get("per_page") or 50

    @property
    def active_count(self):
        return len([k for k in self.values() if k not in {"sort", "per_page"}])

