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

from clusters.models import Backend

from .launch import build_command
from .models import DEFAULT_TOPICS, Experiment, FlagSchema, Sweep, Topic
from .validators import (
    ENV_NAME_RE,
    NAME_HELP,
    NAME_MAX,
    NAME_RE,
    TAG_HELP,
    TAG_RE,
    FlagType,
    FlagValueError,
    coerce_flag,
    target_problem,
    type_of,
    validate_flag_key,
)

FLAG_INPUT_RE = re.compile(r"^flag-([A-Za-z0-9_]{1,32})-(key|type|value)$")
NAME_FIELD_HELP = "Lowercase letters, digits and hyphens; the cluster is named sd- followed by it."
# Fields only the SkyPilot backend uses: the local backend runs the command on this machine as it is.
SKYPILOT_ONLY = (
    "accelerators",
    "num_nodes",
    "cpus",
    "memory",
    "infra",
    "disk_size",
    "image_id",
    "autostop_minutes",
    "use_spot",
    "managed",
    "keep_cluster_up",
)
FLAG_TYPES = FlagType.choices
MAX_FLAGS = 500
GUARDRAIL_FORM_FIELDS = ("max_cost", "max_runtime_minutes", "limit_action", "stall_minutes", "stall_action")
BUDGET_ERROR = "A budget is an amount in $ of at least 0.01, e.g. 50; leave it empty for no budget."
RUNTIME_ERROR = "Give a whole number of minutes, 1 or more (e.g. 120 for 2 hours); leave it empty for no limit."
STALL_ERROR = "Give a whole number of minutes, e.g. 15; 0 turns the watchdog off."


def budget_field(help_text):
    """A budget in $: positive and finite, refused in words (never "Ensure this value is …")."""
    return forms.FloatField(
        required=False,
        min_value=0.01,
        max_value=1e9,
        label="Budget ($)",
        help_text=help_text,
        error_messages={"invalid": BUDGET_ERROR, "min_value": BUDGET_ERROR, "max_value": BUDGET_ERROR},
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0.01", "inputmode": "decimal", "placeholder": "none"}),
    )


def new_uid():
    return secrets.token_hex(4)


def schemas_for(paths):
    """The schema row describing each path (the one rule of ``FlagSchema.objects.describing``)."""
    return FlagSchema.objects.describing(paths)


@dataclass
class FlagRow:
    uid: str
    key: str = ""
    type: str = "string"
    raw: str = ""  # the value as typed; for booleans "true" or ""
    errors: list = field(default_factory=list)  # what is wrong with the key, then with the value
    unknown: bool = False
    schema: FlagSchema | None = None
    choices: list = field(default_factory=list)

    @property
    def error(self):
        return " ".join(self.errors)

    @property
    def label(self):
        return self.key or "a flag without a name"

    @property
    def is_blank(self):
        return not self.key.strip() and not self.raw.strip()

    @property
    def checked(self):
        return self.raw in {"true", "on", "1", "True"}

    def coerce(self):
        """The typed value, or a ValueError with a message naming the flag."""
        raw = self.raw if self.type == FlagType.STRING else self.raw.strip()
        value = self.checked if self.type == FlagType.BOOLEAN else raw
        choices = self.schema.choices if (self.schema is not None and self.type == FlagType.CHOICE) else ()
        try:
            return coerce_flag(self.type, value, choices or ())
        except FlagValueError as exc:
            raise ValueError(f"{self.key} {exc}.") from None


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
    """Coerce and validate the rows: (flags, had_errors). Errors are set on the rows: a row
    with a bad key and a bad value is told of both."""
    flags = {}
    for row in rows:
        row.errors = []
        if not row.key:
            row.errors.append("Give this flag a name.")
        else:
            try:
                validate_flag_key(row.key)
            except ValidationError as exc:
                row.errors.append(exc.messages[0])
        if row.key and row.key in flags:
            row.errors.append(f"{row.key} is set twice.")
        try:
            value = row.coerce()
        except ValueError as exc:
            row.errors.append(str(exc) if row.key else str(exc).lstrip(". ").capitalize())
        else:
            if not row.errors:
                flags[row.key] = value
    if any(r.errors for r in rows):
        return flags, True
    coerced, errors, unknown = FlagSchema.objects.check_flags(flags)
    unknown = set(unknown or ())
    for row in rows:
        row.unknown = row.key in unknown or row.schema is None
        if row.key in (errors or {}):
            row.errors = [errors[row.key]]
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
            if not TAG_RE.fullmatch(tag):
                raise ValidationError(f"Tag {tag!r} is not valid: {TAG_HELP}.")


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
            if not sep or not ENV_NAME_RE.fullmatch(name):
                raise ValidationError(f"Line {number}: write NAME=value, with a NAME of letters, digits and _.")
            envs[name] = val
        return envs


def name_suggestion(text):
    """A name like ``text`` that would be accepted, or ""."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", (text or "").strip().lower())).strip("-")[:NAME_MAX]
    name = name.rstrip("-")
    return name if NAME_RE.fullmatch(name) and name != text else ""


class NameField(forms.CharField):
    """An experiment's name, refused in the words of its help (never Django's "Enter a valid slug")."""

    def __init__(self, **kwargs):
        super().__init__(max_length=NAME_MAX, **kwargs)

    def validate(self, value):
        super().validate(value)
        if value and not NAME_RE.fullmatch(value):
            suggestion = name_suggestion(value)
            raise ValidationError(
                NAME_HELP + (f" For example: {suggestion}" if suggestion else ""), code="invalid_name"
            )


class ExperimentForm(forms.ModelForm):
    name = NameField(help_text=NAME_FIELD_HELP)
    tags = TagsField(required=False, help_text="Separated by commas or spaces, e.g. baseline, lr-sweep")
    envs = EnvsField(required=False, label="Environment variables", help_text="One NAME=value a line")
    max_cost = budget_field(
        "Stop it once its jobs have cost this much, summed over every attempt and restart. Empty: no budget."
    )
    max_runtime_minutes = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**7,
        label="Runtime limit (minutes)",
        help_text="Stop a run after this much wall time, its restarts included. Empty: no limit.",
        error_messages={"invalid": RUNTIME_ERROR, "min_value": RUNTIME_ERROR, "max_value": RUNTIME_ERROR},
        widget=forms.NumberInput(attrs={"min": "1", "placeholder": "none"}),
    )
    stall_minutes = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=10**7,
        label="Stall watchdog (minutes)",
        error_messages={"invalid": STALL_ERROR, "min_value": STALL_ERROR, "max_value": STALL_ERROR},
        widget=forms.NumberInput(attrs={"min": "0"}),
    )
    restart_now = forms.BooleanField(
        required=False,
        label="Restart now to apply the change",
        help_text="Cancels the running job and starts the new spec",
    )

    class Meta:
        model = Experiment
        fields = [
            "name",
            "description",
            "command",
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
            "managed",
            "autostop_minutes",
            "keep_cluster_up",
            "workdir",
            "setup",
            "envs",
            "restart_policy",
            "max_restarts",
            *GUARDRAIL_FORM_FIELDS,
            "tags",
            "desired_state",
        ]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "command": forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"}),
            "setup": forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"}),
        }
        labels = {
            "flag_style": "Flag style",
            "use_spot": "Use spot instances",
            "autostop_minutes": "Stop when idle (minutes)",
            "keep_cluster_up": "Keep the cluster up when idle",
            "disk_size": "Disk size (GiB)",
            "image_id": "Image",
            "num_nodes": "Nodes",
            "cpus": "CPUs",
            "limit_action": "When a limit is reached",
            "stall_action": "When a job stalls",
        }
        help_texts = {
            "limit_action": "What the desired state becomes when the budget or the runtime limit is reached. "
            "A run over budget starts again only once the budget is raised.",
            "stall_action": "A restart counts as an infrastructure failure: it does not use up max restarts. "
            "Flagging only says so on the status.",
        }

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.editing = self.instance.pk is not None
        enabled = set(settings.SKYDECK_BACKENDS)
        self.fields["backend"].choices = [c for c in Backend.choices if c[0] in enabled] or Backend.choices
        self.fields["autostop_minutes"].help_text = (
            f"After a run ends, its cluster waits this long for a restart, then is stopped (torn down where "
            f"the infra cannot stop). Empty: {settings.SKYDECK_IDLE_MINUTES} minutes."
        )
        default = settings.SKYDECK_STALL_MINUTES
        self.fields["stall_minutes"].help_text = "Act when a running job prints nothing for this many minutes. " + (
            f"Empty: this SkyDeck's default, {default} minutes; 0: off." if default else "Empty or 0: off."
        )
        for name in ("limit_action", "stall_action"):
            # A form that leaves them out (a script, an older page) keeps what the experiment had.
            self.fields[name].required = False
        if self.editing:
            spent = self.instance.spent()
            if spent:
                self.fields["max_cost"].help_text += f" Spent so far: ${spent:,.2f}."
            # The name names the cluster and jobs: renaming would orphan them.
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "The name cannot change: it names the cluster and its jobs."
        if self.is_bound:
            self.flag_rows = rows_from_data(self.data)
        else:
            self.flag_rows = rows_from_flags(self.initial.get("flags") or self.instance.flags or {})
        self.flag_errors = False
        self.flags = {}

    @property
    def running_job(self):
        return self.instance.active_job if self.editing else None

    @property
    def backend_value(self):
        return self["backend"].value()

    @property
    def restart_policy_value(self):
        return self["restart_policy"].value()

    def problems(self):
        """What keeps the form from saving, in the order of the page: (what, the id to jump to)."""
        found = []
        for name in self.fields:
            if name in self.errors:
                found.append((self.fields[name].label or name.replace("_", " ").capitalize(), self[name].auto_id))
            if name == "flag_style":
                bad = [r for r in self.flag_rows if r.errors]
                if bad:
                    found.append((f"{len(bad)} flag{'s' if len(bad) != 1 else ''}", f"flag-{bad[0].uid}-key"))
        return found

    def other_errors(self):
        """Errors of the whole form other than "some flags are not valid" (which ``problems`` says)."""
        return [m for e in self.non_field_errors().as_data() if e.code != "flags" for m in e.messages]

    def clean_limit_action(self):
        return self.cleaned_data.get("limit_action") or self.instance.limit_action

    def clean_stall_action(self):
        return self.cleaned_data.get("stall_action") or self.instance.stall_action

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("backend") == Backend.LOCAL:
            # Hidden for the local backend, so nothing there can be wrong: it runs on one node, unmanaged.
            cleaned["num_nodes"], cleaned["managed"] = 1, False
        self.flags, self.flag_errors = parse_flags(self.flag_rows)
        if self.flag_errors:
            raise ValidationError("Some flags are not valid: see the marked rows.", code="flags")
        command = cleaned.get("command")
        if command is not None:
            try:
                build_command(command, self.flags, cleaned.get("flag_style") or "plain")
            except ValidationError as exc:
                self.add_error("command", exc)
        return cleaned

    def _post_clean(self):
        self.instance.flags = self.flags
        super()._post_clean()

    def changes(self):
        """The fields to hand to ``intent.edit`` (or ``intent.create``), after a valid form."""
        names = [f for f in self._meta.fields if f not in {"name", "desired_state"} and f in self.cleaned_data]
        return {**{f: self.cleaned_data[f] for f in names}, "flags": self.flags}


def preview_command(data):
    """The command line a half-filled form would run, or (None, reason)."""
    rows = rows_from_data(data)
    flags, had_errors = parse_flags(rows)
    if had_errors:
        # In words: the rows turn red only when the form is sent.
        return None, "The command line appears when the flags are right: " + " ".join(r.error for r in rows if r.errors)
    style = data.get("flag_style") or "plain"
    try:
        return build_command(data.get("command", ""), flags, style), ""
    except ValidationError as exc:
        return None, "; ".join(exc.messages)


# --- notifications -------------------------------------------------------------------------------


class SubscriptionForm(forms.Form):
    """Where to send what: an apprise URL or an email address, the kinds of event, and whose."""

    SCOPES = [("mine", "Everything of mine"), ("experiment", "One experiment"), ("sweep", "One sweep")]

    target = forms.CharField(
        max_length=1000,
        label="Send to",
        help_text="An email address, or a notification URL: <code>slack://TokenA/TokenB/TokenC/#channel</code>, "
        "<code>discord://WebhookID/WebhookToken</code>, <code>json://host/path</code> (a JSON webhook), "
        "<code>mailto://user:password@example.com</code>, and the many other services apprise knows.",
        widget=forms.TextInput(attrs={"class": "mono", "spellcheck": "false", "autocomplete": "off"}),
    )
    topics = forms.MultipleChoiceField(
        choices=Topic.choices,
        widget=forms.CheckboxSelectMultiple,
        label="When",
        error_messages={"required": "Choose at least one kind of event."},
    )
    scope = forms.ChoiceField(choices=SCOPES, initial="mine", required=False, widget=forms.RadioSelect, label="About")
    experiment = forms.CharField(required=False, max_length=NAME_MAX, label="Experiment")
    sweep = forms.CharField(required=False, max_length=NAME_MAX, label="Sweep")

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["topics"].initial = list(DEFAULT_TOPICS)

    def clean_scope(self):
        return self.cleaned_data.get("scope") or "mine"

    def clean_target(self):
        target = self.cleaned_data["target"].strip()
        problem = target_problem(target)
        if problem:
            raise ValidationError(problem)
        return target

    def clean(self):
        cleaned = super().clean()
        scope = cleaned.get("scope")
        cleaned["experiment_obj"] = cleaned["sweep_obj"] = None
        for kind, model in (("experiment", Experiment), ("sweep", Sweep)):
            if scope != kind:
                continue
            name = (cleaned.get(kind) or "").strip()
            found = model.objects.filter(name=name).first() if name else None
            if found is None:
                self.add_error(kind, f"No {kind} named {name!r}." if name else f"Name the {kind}.")
            cleaned[f"{kind}_obj"] = found
        return cleaned
