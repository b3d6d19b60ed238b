"""Flag schemas: inference from pydantic models, learning from used flags, validation.

Interface used by forms, the admin and the API:

    validate_against_schema(flags) -> (coerced_flags, errors, unknown_paths)

``errors`` maps a flag path to a message naming the flag; ``unknown_paths``
lists flags no schema knows (allowed, and marked as such).

Schema rows come from three sources. Rows imported from a model or entered
by hand are authoritative: a value that does not fit their type or choices is
refused. Rows learnt from flags already in use only describe what was seen, so
they feed the typeahead and mark a flag as known, but never refuse a value.
"""

import enum
import json
import math
import types
import typing
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Case, IntegerField, Q, Value, When

from .launch import FLAG_KEY_RE, validate_flag_dict

MAX_DEPTH = 12
TRUE_WORDS = {"true", "1", "yes", "on", "t", "y"}
FALSE_WORDS = {"false", "0", "no", "off", "f", "n"}
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
    from pydantic import BaseModel

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
        from pydantic_core import to_jsonable_python

        value = to_jsonable_python(value)
        json.dumps(value)
        return value
    except Exception:  # noqa: BLE001 - an odd default is shown as text, never fatal
        return str(value)


def _field_default(info):
    from pydantic_core import PydanticUndefined

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
    from experiments.models import FlagSchema

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
    from experiments.models import FlagSchema

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
    import importlib

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


def type_of_value(value):
    from experiments.models import FlagSchema

    if isinstance(value, bool):
        return FlagSchema.Type.BOOLEAN
    if isinstance(value, int):
        return FlagSchema.Type.INTEGER
    if isinstance(value, float):
        return FlagSchema.Type.FLOAT
    return FlagSchema.Type.STRING


def _widen(old, new):
    """The type that holds both: integer and float make float; any other mix is string."""
    if old == new:
        return old
    if {old, new} == {"integer", "float"}:
        return "float"
    return "string"


def learn_flags(flags):
    """Record flags no schema knows yet, typed from their values; widen learnt types."""
    from experiments.models import FlagSchema

    if not isinstance(flags, dict):
        return
    flags = {k: v for k, v in flags.items() if isinstance(k, str) and FLAG_KEY_RE.match(k) and len(k) <= 300}
    if not flags:
        return
    rows = list(FlagSchema.objects.filter(path__in=list(flags)).only("id", "path", "type", "source"))
    known = {r.path for r in rows}
    for row in rows:
        if row.source == FlagSchema.Source.LEARNT:
            widened = _widen(row.type, type_of_value(flags[row.path]))
            if widened != row.type:
                FlagSchema.objects.filter(pk=row.pk).update(type=widened, type_name=widened)
    new = [
        FlagSchema(
            namespace=LEARNT_NAMESPACE,
            path=path,
            type=type_of_value(value),
            type_name=type_of_value(value),
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
    from experiments.models import Experiment

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


# --- validation and coercion ----------------------------------------------------------


class _Refused(Exception):
    pass


def _coerce_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise _Refused("must be true or false")


def _coerce_int(value):
    if isinstance(value, bool):
        raise _Refused("must be an integer, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise _Refused("must be an integer")


def _coerce_float(value):
    if isinstance(value, bool):
        raise _Refused("must be a number, not a boolean")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise _Refused("must be a number") from None
    else:
        raise _Refused("must be a number")
    if not math.isfinite(result):
        raise _Refused("must be a finite number")
    return result


def _same(a, b):
    return a == b and type(a) is type(b) or (type(a) in (int, float) and type(b) in (int, float) and a == b)


def _coerce_choice(value, choices):
    for choice in choices:
        if _same(value, choice):
            return choice
    text = str(value).strip() if not isinstance(value, bool) else ("true" if value else "false")
    for choice in choices:
        shown = ("true" if choice else "false") if isinstance(choice, bool) else str(choice)
        if text == shown:
            return choice
    listed = ", ".join(json.dumps(c) for c in choices[:20])
    raise _Refused(f"must be one of {listed}")


def coerce_value(row, value):
    """The value as the schema row's type, or _Refused with why not."""
    kind = row.type
    if kind == "boolean":
        return _coerce_bool(value)
    if kind == "integer":
        return _coerce_int(value)
    if kind == "float":
        return _coerce_float(value)
    if kind == "choice":
        return _coerce_choice(value, list(row.choices or []))
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def storable_text(value):
    """Text a database and a shell can hold: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable(value):
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return storable_text(value)
    return True


def _priority():
    from experiments.models import FlagSchema

    return Case(
        When(source=FlagSchema.Source.MANUAL, then=Value(0)),
        When(source=FlagSchema.Source.MODEL, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )


def schema_rows_for(paths):
    """path -> its schema rows, authoritative first."""
    from experiments.models import FlagSchema

    rows = {}
    for row in FlagSchema.objects.filter(path__in=list(paths)).annotate(rank=_priority()).order_by("rank", "namespace"):
        rows.setdefault(row.path, []).append(row)
    return rows


def validate_against_schema(flags):
    """Check and coerce flags against the stored schemas.

    Returns ``(coerced_flags, errors, unknown_paths)``. A value that fits no
    authoritative schema row for its path is an error naming the flag; a flag
    with no row at all is unknown, kept as it is, and listed.
    """
    from experiments.models import FlagSchema

    if not isinstance(flags, dict):
        return {}, {"": "Flags must be an object of name: value."}, []
    coerced, errors, unknown = {}, {}, []
    candidates = {}
    for key, value in flags.items():
        if not isinstance(key, str) or not FLAG_KEY_RE.match(key) or len(key) > 300:
            errors[str(key)] = (
                f"Flag name {str(key)!r} is not valid: start with a letter or _, then letters, digits, _ . or -."
            )
        elif value is None or isinstance(value, (list, dict)) or not _storable(value):
            errors[key] = f"Flag {key!r} must be a string, finite number or boolean without NUL characters."
        else:
            candidates[key] = value
    rows_by_path = schema_rows_for(candidates) if candidates else {}
    for key, value in candidates.items():
        rows = rows_by_path.get(key, [])
        if not rows:
            unknown.append(key)
            coerced[key] = value
            continue
        authoritative = [r for r in rows if r.source != FlagSchema.Source.LEARNT]
        if not authoritative:
            coerced[key] = value
            continue
        first_error = None
        for row in authoritative:
            try:
                coerced[key] = coerce_value(row, value)
                break
            except _Refused as exc:
                first_error = first_error or f"Flag {key!r} {exc} (got {json.dumps(value)})."
        else:
            errors[key] = first_error
    if not errors:
        try:
            validate_flag_dict(coerced)
        except ValidationError as exc:
            errors[""] = "; ".join(exc.messages)
    return coerced, errors, sorted(unknown)


def unknown_paths(flags):
    """The flags that no schema row describes."""
    if not isinstance(flags, dict) or not flags:
        return []
    rows = schema_rows_for([k for k in flags if isinstance(k, str)])
    return sorted(k for k in flags if k not in rows)


# --- typeahead --------------------------------------------------------------------------


def search_paths(query="", limit=20, namespace=None):
    """FlagSchema rows whose path (or description) matches ``query``, best first.

    One row per path: an imported or hand-entered row wins over a learnt one.
    Prefix matches of the path come before matches elsewhere.
    """
    from experiments.models import FlagSchema

    query = (query or "").strip()
    qs = FlagSchema.objects.all()
    if namespace:
        qs = qs.filter(namespace=namespace)
    if query:
        qs = qs.filter(Q(path__icontains=query) | Q(description__icontains=query))
        match = Case(
            When(path__istartswith=query, then=Value(0)),
            When(path__icontains=f".{query}", then=Value(1)),
            When(path__icontains=query, then=Value(2)),
            default=Value(3),
            output_field=IntegerField(),
        )
    else:
        match = Value(0, output_field=IntegerField())
    qs = qs.annotate(match=match, rank=_priority()).order_by("match", "path", "rank", "namespace")
    limit = max(1, min(int(limit or 20), 200))
    seen, result = set(), []
    # Read a few more than asked so duplicates across namespaces still fill the page.
    for row in qs[: limit * 4]:
        if row.path in seen:
            continue
        seen.add(row.path)
        result.append(row)
        if len(result) == limit:
            break
    return result
