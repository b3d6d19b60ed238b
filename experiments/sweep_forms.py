"""The sweep form: a base experiment, its flags' values, and how to run the children."""

import json
import re

from django import forms
from django.core.exceptions import ValidationError

from .forms import budget_field
from .models import DesiredState, Experiment, LimitAction, Sweep
from .sweeps import MAX_CHILDREN
from .validators import NAME_RE, name_validator

RANGE_RE = re.compile(
    r"^(?P<min>\S+)\s*\.\.\s*(?P<max>\S+?)(?:\s+(?P<opts>(?:log|int|float)(?:\s+(?:log|int|float))*))?$"
)


# A value: a JSON string (which may hold commas) or anything up to the next comma.
VALUE_RE = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^,]+)\s*(?:,|$)')


def parse_value(text):
    """``0.1`` → 0.1, ``true`` → True, ``"a b"`` → 'a b', anything else stays text."""
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def parse_parameters(text):
    """Parameters from the textarea: a JSON object, or one flag a line.

    ``lr: 0.1, 0.01, 0.001`` is a list; ``lr: 1e-5 .. 1e-1 log`` a range
    (random sweeps); options after a range: ``log``, ``int``, ``float``.
    """
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValidationError("Give a JSON object of flag: values.")
        return value
    parameters = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            key, sep, rest = line.partition("=")
        key, rest = key.strip(), rest.strip()
        if not sep or not key or not rest:
            raise ValidationError(f"Line {number}: write flag: value, value, … or flag: min .. max.")
        if key in parameters:
            raise ValidationError(f"Line {number}: {key} is given twice.")
        match = RANGE_RE.match(rest)
        if match:
            spec = {"min": parse_value(match["min"]), "max": parse_value(match["max"])}
            for option in (match["opts"] or "").split():
                if option == "log":
                    spec["log"] = True
                else:
                    spec["type"] = option
            parameters[key] = spec
        else:
            parameters[key] = [parse_value(v) for v in VALUE_RE.findall(rest) if v.strip()]
    return parameters


def _format_value(value):
    # Quote a string only when reading it back would not give the same string.
    if isinstance(value, str) and "," not in value and parse_value(value) == value and value == value.strip():
        return value
    return json.dumps(value)


def format_parameters(parameters):
    """The parameters as the textarea shows them (parse_parameters reads them back)."""
    lines = []
    for key, spec in (parameters or {}).items():
        if isinstance(spec, dict):
            opts = [o for o in ("log" if spec.get("log") else "", spec.get("type") or "") if o]
            lines.append(" ".join([f"{key}: {spec.get('min')} .. {spec.get('max')}", *opts]))
        else:
            lines.append(f"{key}: " + ", ".join(_format_value(v) for v in spec))
    return "\n".join(lines)


class SweepForm(forms.Form):
    name = forms.CharField(
        max_length=60, validators=[name_validator], help_text="Lowercase letters, digits and hyphens."
    )
    base = forms.ModelChoiceField(
        queryset=Experiment.objects.order_by("name"),
        to_field_name="name",
        help_text="Children copy its command, resources and flags, then set the sweep's values.",
    )
    kind = forms.ChoiceField(choices=Sweep.Kind.choices, initial=Sweep.Kind.GRID, widget=forms.RadioSelect)
    parameters = forms.CharField(
        widget=forms.Textarea(
            attrs={
                "rows": 5,
                "class": "mono",
                "spellcheck": "false",
                "placeholder": "trainer.optimizer.lr: 0.001, 0.0003\nmodel.layers: 2, 4, 8, 16",
            }
        ),
        help_text="One flag a line: <code>flag: v1, v2, …</code>; "
        "for random sweeps also <code>flag: min .. max [log] [int]</code>. Or a JSON object.",
    )
    samples = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_CHILDREN, help_text="Random sweeps: how many."
    )
    seed = forms.IntegerField(
        required=False, min_value=0, max_value=2**31 - 1, help_text="Random sweeps: the same seed, the same samples."
    )
    max_concurrent = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10000,
        help_text="At most this many children run at once; empty for no limit.",
    )
    max_cost = budget_field(
        "Stop every experiment of the sweep once their jobs together have cost this much. Empty: no budget."
    )
    limit_action = forms.ChoiceField(
        required=False,
        choices=LimitAction.choices,
        initial=LimitAction.STOPPED,
        label="When the budget is reached",
        help_text="What the sweep's experiments are set to. They start again only once the budget is raised.",
    )
    desired_state = forms.ChoiceField(
        choices=[(DesiredState.RUNNING, "Run them"), (DesiredState.STOPPED, "Create them stopped")],
        initial=DesiredState.STOPPED,
        label="When created",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_name(self):
        name = self.cleaned_data["name"]
        if not NAME_RE.fullmatch(name):
            raise ValidationError("Use lowercase letters, digits and hyphens.")
        if Sweep.objects.filter(name=name).exists():
            raise ValidationError(f"A sweep named {name} already exists.")
        return name

    def clean_limit_action(self):
        return self.cleaned_data.get("limit_action") or LimitAction.STOPPED

    def clean_parameters(self):
        return parse_parameters(self.cleaned_data["parameters"])
