"""Pure checks of what a user may write: names, tags, envs, flags and sweep parameters.

Nothing here touches the database or imports SkyDeck's models, so the models,
the forms, the API and the command builder all import it at the top.

It also holds the one flag type system: ``FLAG_TYPES`` maps a flag type to a
pydantic ``TypeAdapter``, and ``coerce_flag`` is how every surface (the form's
typed rows, ``Experiment.clean()``, the admin's schema defaults) turns a value
into its type. It is as strict as the API: no boolean for a number, no inf/NaN.
"""

import json
import math
import re
from typing import Annotated

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator, validate_email
from django.db.models import TextChoices
from pydantic import BeforeValidator, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

# --- names -------------------------------------------------------------------------

NAME_MAX = 60
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,58}[a-z0-9])?$")
NAME_HELP = "Use lowercase letters, digits and hyphens, starting and ending with a letter or digit (at most 60)."
# \Z, not $: a name (or key) with a trailing newline is refused too.
name_validator = RegexValidator(re.compile(NAME_RE.pattern.removesuffix("$") + r"\Z"), NAME_HELP, code="invalid_name")

# Names that are pages of SkyDeck (/experiments/new/, /sweeps/new/, ...), so no detail page could be reached.
RESERVED_NAMES = frozenset({"new", "bulk", "flags", "preview", "import", "export"})


def validate_not_reserved(value):
    if value in RESERVED_NAMES:
        raise ValidationError(f"{value!r} is the name of a SkyDeck page: choose another name.", code="reserved")


def unique_name(name, taken, limit=NAME_MAX):
    """``name``, or ``name-2``, ``name-3``… (cut to fit ``limit``), whichever is not in ``taken``."""
    candidate, n = name, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate = name[: limit - len(suffix)].rstrip("-") + suffix
        n += 1
    return candidate


# --- text, tags and environment variables --------------------------------------------

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,49}$")
TAG_HELP = "use letters, digits and _ . : / - (at most 50)"
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def storable_text(value):
    """Text a database and a shell can hold: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_tags(value):
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValidationError("Tags must be a list of strings.", code="invalid_tags")
    for tag in value:
        if not TAG_RE.fullmatch(tag):
            raise ValidationError(f"Tag {tag!r} is not valid: {TAG_HELP}.", code="invalid_tag")


def validate_envs(value):
    if not isinstance(value, dict):
        raise ValidationError("Environment variables must be an object of NAME: value.", code="invalid_envs")
    for key, val in value.items():
        if not ENV_NAME_RE.fullmatch(str(key)):
            raise ValidationError(f"{key!r} is not a valid environment variable name.", code="invalid_env_name")
        if not isinstance(val, (str, int, float, bool)):
            raise ValidationError(f"Environment variable {key} must be a string or number.", code="invalid_env")
        if isinstance(val, str) and not storable_text(val):
            raise ValidationError(f"Environment variable {key} holds characters that cannot be stored.")


# --- flags -----------------------------------------------------------------------------

FLAG_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
FLAG_KEY_MAX = 300
FLAG_KEY_HELP = "start with a letter or _, then letters, digits, _ . or -"
FLAG_VALUE_TYPES = (str, int, float, bool)
# One argument of a command line may hold at most 128 KiB (Linux's MAX_ARG_STRLEN), and all
# of them together a little over 2 MiB: refuse what the kernel would refuse at launch.
MAX_FLAG_ARGUMENT_BYTES = 128 * 1024 - 1
MAX_FLAGS_BYTES = 1024 * 1024


def validate_flag_key(key):
    if not isinstance(key, str) or not FLAG_KEY_RE.fullmatch(key) or len(key) > FLAG_KEY_MAX:
        raise ValidationError(f"Flag name {str(key)!r} is not valid: {FLAG_KEY_HELP}.", code="invalid_flag_key")


def validate_flag_value(key, value):
    """A value a flag may hold: a string, a finite number or a boolean that fits on a command line."""
    if value is None or not isinstance(value, FLAG_VALUE_TYPES):
        raise ValidationError(
            f"Flag {key!r} must be a string, number or boolean, not {type(value).__name__}.", code="invalid_flag_value"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"Flag {key!r} must be a finite number.", code="invalid_flag_value")
    if isinstance(value, str):
        if not storable_text(value):
            raise ValidationError(
                f"Flag {key!r} holds characters that cannot be stored (NUL).", code="invalid_flag_value"
            )
        if len(key) + 1 + len(value.encode()) > MAX_FLAG_ARGUMENT_BYTES:
            raise ValidationError(
                f"Flag {key!r} is too long for a command line (at most {MAX_FLAG_ARGUMENT_BYTES // 1024} KiB).",
                code="flag_too_long",
            )


def validate_flag_dict(flags):
    if not isinstance(flags, dict):
        raise ValidationError("Flags must be an object of name: value.", code="invalid_flags")
    total = 0
    for key, value in flags.items():
        validate_flag_key(key)
        validate_flag_value(key, value)
        total += len(key) + len(str(value).encode()) + 4
    if total > MAX_FLAGS_BYTES:
        raise ValidationError(
            f"The flags are too long for a command line together (at most {MAX_FLAGS_BYTES // 1024} KiB).",
            code="flags_too_long",
        )


class FlagType(TextChoices):
    STRING = "string", "Text"
    INTEGER = "integer", "Integer"
    FLOAT = "float", "Float"
    BOOLEAN = "boolean", "Boolean"
    CHOICE = "choice", "Choice"


def _no_bool(value):
    if isinstance(value, bool):
        raise ValueError("a boolean")
    return value.strip() if isinstance(value, str) else value


def _as_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value


def _bool_word(value):
    return value.strip() if isinstance(value, str) else value


# Lax where text must become a value (a form posts "5"), strict where JSON is already typed.
FLAG_TYPES = {
    FlagType.STRING: TypeAdapter(Annotated[str, BeforeValidator(_as_text)]),
    FlagType.INTEGER: TypeAdapter(Annotated[int, BeforeValidator(_no_bool)]),
    FlagType.FLOAT: TypeAdapter(Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]),
    FlagType.BOOLEAN: TypeAdapter(Annotated[bool, BeforeValidator(_bool_word)]),
}
FLAG_TYPE_ERRORS = {
    FlagType.STRING: "must be text",
    FlagType.INTEGER: "must be an integer",
    FlagType.FLOAT: "must be a finite number",
    FlagType.BOOLEAN: "must be true or false",
}


class FlagValueError(ValueError):
    """A value that does not fit its flag's type; the message says what it must be."""


def _same(a, b):
    return (a == b and type(a) is type(b)) or (
        type(a) in (int, float) and type(b) in (int, float) and not isinstance(a, bool) and a == b
    )


def _coerce_choice(value, choices):
    for choice in choices:
        if _same(value, choice):
            return choice
    text = ("true" if value else "false") if isinstance(value, bool) else str(value).strip()
    for choice in choices:
        shown = ("true" if choice else "false") if isinstance(choice, bool) else str(choice)
        if text == shown:
            return choice
    raise FlagValueError("must be one of " + ", ".join(json.dumps(c) for c in list(choices)[:20]))


def coerce_flag(kind, value, choices=()):
    """``value`` as a flag of type ``kind``, or ``FlagValueError`` saying what it must be."""
    if kind == FlagType.CHOICE:
        if choices:
            return _coerce_choice(value, choices)
        kind = FlagType.STRING
    adapter = FLAG_TYPES.get(kind, FLAG_TYPES[FlagType.STRING])
    try:
        return adapter.validate_python(value)
    except PydanticValidationError:
        reason = FLAG_TYPE_ERRORS.get(kind, "is not valid")
        if isinstance(value, bool) and kind in (FlagType.INTEGER, FlagType.FLOAT):
            reason += ", not a boolean"
        raise FlagValueError(reason) from None


def type_of(value):
    """The flag type a value already has."""
    if isinstance(value, bool):
        return FlagType.BOOLEAN
    if isinstance(value, int):
        return FlagType.INTEGER
    if isinstance(value, float):
        return FlagType.FLOAT
    return FlagType.STRING


# --- sweep parameters -------------------------------------------------------------------

SWEEP_GRID, SWEEP_RANDOM = "grid", "random"
MAX_SWEEP_CHILDREN = 500


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def range_type(spec):
    """``int`` or ``float``: given, or ``int`` when both ends are whole numbers."""
    if spec.get("type"):
        return spec["type"]
    both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
    return "int" if both_int else "float"


def _check_range(path, spec):
    extra = set(spec) - {"min", "max", "log", "type"}
    if extra:
        raise ValidationError(f"{path}: a range takes min, max, log and type, not {', '.join(sorted(extra))}.")
    low, high = spec.get("min"), spec.get("max")
    if not (_is_number(low) and _is_number(high)):
        raise ValidationError(f"{path}: a range needs numeric min and max.")
    if low > high:
        raise ValidationError(f"{path}: min ({low}) is above max ({high}).")
    if not isinstance(spec.get("log", False), bool):
        raise ValidationError(f"{path}: log must be true or false.")
    if spec.get("log") and low <= 0:
        raise ValidationError(f"{path}: a log range needs min above 0.")
    if spec.get("type", None) not in (None, "int", "float"):
        raise ValidationError(f"{path}: type must be int or float.")
    if range_type(spec) == "int" and math.floor(high) < math.ceil(low):
        raise ValidationError(f"{path}: no whole number lies between min and max.")


def _check_values(path, values):
    if not values:
        raise ValidationError(f"{path}: the list of values is empty.")
    if len(values) > MAX_SWEEP_CHILDREN:
        raise ValidationError(f"{path}: at most {MAX_SWEEP_CHILDREN} values.")
    for value in values:
        if not isinstance(value, FLAG_VALUE_TYPES) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValidationError(f"{path}: values must be strings, finite numbers or booleans.")
        if isinstance(value, str) and not storable_text(value):
            raise ValidationError(f"{path}: a value holds characters that cannot be stored.")


def sweep_size(kind, parameters, samples):
    """How many children the sweep makes (parameters already valid)."""
    if kind == SWEEP_GRID:
        return math.prod(len(v) for v in parameters.values())
    return samples


def validate_sweep(kind, parameters, samples):
    """Raise ValidationError (by field) unless the sweep can be expanded."""
    if kind not in (SWEEP_GRID, SWEEP_RANDOM):
        raise ValidationError({"kind": f"{kind!r} is not a sweep kind (use grid or random)."})
    if not isinstance(parameters, dict) or not parameters:
        raise ValidationError({"parameters": "Give at least one flag and its values."})
    for path, spec in parameters.items():
        try:
            if not isinstance(path, str) or not FLAG_KEY_RE.fullmatch(path) or len(path) > FLAG_KEY_MAX:
                raise ValidationError(f"{path!r} is not a valid flag name.")
            if isinstance(spec, list):
                _check_values(path, spec)
            elif isinstance(spec, dict):
                if kind == SWEEP_GRID:
                    raise ValidationError(f"{path}: a grid takes a list of values; ranges are for random sweeps.")
                _check_range(path, spec)
            else:
                raise ValidationError(f"{path}: give a list of values or a {{min, max}} range.")
        except ValidationError as exc:
            raise ValidationError({"parameters": exc.messages}) from None
    if kind == SWEEP_GRID:
        total = sweep_size(kind, parameters, samples)
        if total > MAX_SWEEP_CHILDREN:
            raise ValidationError({"parameters": f"The grid has {total} points; at most {MAX_SWEEP_CHILDREN}."})
    else:
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ValidationError({"samples": "A random sweep needs the number of samples (at least 1)."})
        if samples > MAX_SWEEP_CHILDREN:
            raise ValidationError({"samples": f"At most {MAX_SWEEP_CHILDREN} samples."})


# --- notification targets -------------------------------------------------------------


def is_email(target):
    try:
        validate_email(target)
    except Exception:  # noqa: BLE001 - ValidationError: not an address
        return False
    return "://" not in target


def target_problem(target):
    """Why ``target`` cannot be used ('' when it can)."""
    target = (target or "").strip()
    if not target:
        return "Give an email address or a notification URL."
    if is_email(target):
        if not settings.SKYDECK_EMAIL_CONFIGURED:
            return "Email is not configured on this SkyDeck (EMAIL_HOST): give a URL such as slack://… instead."
        return ""
    if "://" not in target:
        return "Not an email address, nor a URL such as slack://…, discord://… or json://host/path."
    import apprise

    if apprise.Apprise.instantiate(target) is None:
        scheme = target.split("://", 1)[0]
        return f"{scheme}:// is not a notification URL SkyDeck understands (see the apprise services)."
    return ""
