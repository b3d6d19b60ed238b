"""Flag schemas: inferred from pydantic models, and learnt from the flags experiments use.

Schema rows come from three sources. Rows imported from a model or entered
by hand are authoritative: a value that does not fit their type or choices is
refused (``FlagSchema.objects.check_flags``, which ``Experiment.clean()`` calls,
with the one flag type system of ``experiments.validators``). Rows learnt from
flags already in use only describe what was seen, so they feed the typeahead
and mark a flag as known, but never refuse a value.
"""

import enum
import importlib
import json
import math
import types
import typing
from dataclasses import dataclass, field

from django.db import transaction
from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

from .models import Experiment, FlagSchema
from .validators import FLAG_KEY_MAX, FLAG_KEY_RE, type_of

MAX_DEPTH = 12
LEARNT_NAMESPACE = "learnt"


# --- inference ------------------------------------------------------------------


@dataclass
class FlagSpec:
    """One flag as inferred from a model, before it is stored."""

    path: str
    type: str
    type_name: str
    default: object = None
    choices: list = field(default_factory=list)
    description: str = ""
    required: bool = False


def type_display(annotation):
    """A readable name for a type annotation: ``int``, ``list[str]``, ``Optional[float]``."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation)
    for prefix in ("typing.", "typing_extensions."):
        text = text.replace(prefix, "")
    return text


def _strip_annotated(annotation):
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _unwrap_optional(annotation):
    """Optional[X] and X | None become X; other unions stay as they are."""
    annotation = _strip_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip_annotated(args[0])
    return annotation


def _is_model(annotation):
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _jsonable(value):
    """A default as it can be stored in JSON (enum members by value)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    try:
        value = to_jsonable_python(value)
        json.dumps(value)
        return value
    except Exception:  # noqa: BLE001 - an odd default is shown as text, never fatal
        return str(value)


def _field_default(info):
    if info.default is not PydanticUndefined:
        return _jsonable(info.default)
    if info.default_factory is not None:
        try:
            return _jsonable(info.default_factory())
        except TypeError:  # a factory that wants the validated data
            return None
    return None


def _classify(annotation):
    """(type, choices) for a leaf annotation, already unwrapped."""
    T = FlagSchema.Type
    if annotation is bool:
        return T.BOOLEAN, []
    if annotation is int:
        return T.INTEGER, []
    if annotation is float:
        return T.FLOAT, []
    if annotation is str:
        return T.STRING, []
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return T.CHOICE, [_jsonable(member.value) for member in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return T.CHOICE, [_jsonable(v) for v in typing.get_args(annotation)]
    # bool/int/float subclasses (IntEnum is handled above) keep their base type
    if isinstance(annotation, type):
        for base, kind in ((bool, T.BOOLEAN), (int, T.INTEGER), (float, T.FLOAT), (str, T.STRING)):
            if issubclass(annotation, base):
                return kind, []
    return T.STRING, []


def infer_schema(model, prefix="", _depth=0, _seen=None):
    """Every leaf field of a pydantic model, nested models flattened to dotted paths."""
    if not _is_model(model):
        raise TypeError(f"{model!r} is not a pydantic model")
    seen = (_seen or set()) | {model}
    specs = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        inner = _unwrap_optional(annotation)
        if _is_model(inner) and inner not in seen and _depth < MAX_DEPTH:
            specs.extend(infer_schema(inner, prefix=f"{path}.", _depth=_depth + 1, _seen=seen))
            continue
        kind, choices = _classify(inner)
        default = _field_default(info)
        if kind == "choice" and default is not None and choices and default not in choices:
            default = _jsonable(default)
        specs.append(
            FlagSpec(
                path=path,
                type=kind,
                type_name=type_display(annotation)[:200],
                default=default,
                choices=choices,
                description=(info.description or "").strip(),
                required=info.is_required(),
            )
        )
    return specs


def import_model(model, namespace):
    """Store a model's flags as ``namespace``'s schema, replacing what it held before."""
    specs = infer_schema(model)
    rows = [
        FlagSchema(
            namespace=namespace,
            path=s.path,
            type=s.type,
            type_name=s.type_name,
            default=s.default,
            choices=s.choices,
            description=s.description,
            required=s.required,
            source=FlagSchema.Source.MODEL,
        )
        for s in specs
    ]
    with transaction.atomic():
        FlagSchema.objects.filter(namespace=namespace).delete()
        FlagSchema.objects.bulk_create(rows)
        # A learnt guess is redundant once a model describes the flag.
        FlagSchema.objects.filter(source=FlagSchema.Source.LEARNT, path__in=[s.path for s in specs]).delete()
    return rows


def load_model(dotted):
    """``package.module:ClassName`` (or ``package.module.ClassName``) to the class."""
    if ":" in dotted:
        module_name, _, attr_path = dotted.partition(":")
    else:
        module_name, _, attr_path = dotted.rpartition(".")
    if not module_name or not attr_path:
        raise ValueError(f"{dotted!r}: use module.path:ModelClass")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no attribute {attr_path!r}") from None
    if not _is_model(obj):
        raise ValueError(f"{dotted} is not a pydantic model class")
    return obj


# --- learning from flags in use ----------------------------------------------------


def _widen(old, new):
    """The type that holds both: integer and float make float; any other mix is string."""
    if old == new:
        return old
    if {old, new} == {"integer", "float"}:
        return "float"
    return "string"


def learn_flags(flags):
    """Record flags no schema knows yet, typed from their values; widen learnt types."""
    if not isinstance(flags, dict):
        return
    flags = {
        k: v for k, v in flags.items() if isinstance(k, str) and FLAG_KEY_RE.fullmatch(k) and len(k) <= FLAG_KEY_MAX
    }
    if not flags:
        return
    rows = list(FlagSchema.objects.filter(path__in=list(flags)).only("id", "path", "type", "source"))
    known = {r.path for r in rows}
    for row in rows:
        if row.source == FlagSchema.Source.LEARNT:
            widened = _widen(row.type, type_of(flags[row.path]))
            if widened != row.type:
                FlagSchema.objects.filter(pk=row.pk).update(type=widened, type_name=widened)
    new = [
        FlagSchema(
            namespace=LEARNT_NAMESPACE,
            path=path,
            type=type_of(value),
            type_name=type_of(value),
            default=value,
            source=FlagSchema.Source.LEARNT,
            description="Learnt from an experiment's flags",
        )
        for path, value in flags.items()
        if path not in known
    ]
    if new:
        FlagSchema.objects.bulk_create(new, ignore_conflicts=True)


def learn_from_experiments(queryset=None):
    """Learn every flag used by existing experiments (a backfill)."""
    queryset = queryset if queryset is not None else Experiment.objects.all()
    for flags in queryset.values_list("flags", flat=True).iterator():
        learn_flags(flags)


def learn_on_save(sender, instance, **kwargs):
    """post_save receiver: what experiments use becomes typeahead material."""
    update_fields = kwargs.get("update_fields")
    if kwargs.get("raw") or (update_fields is not None and "flags" not in update_fields):
        return
    flags = instance.flags
    transaction.on_commit(lambda: learn_flags(flags))
