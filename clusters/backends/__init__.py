"""Backend registry. ``get_backend("local")`` or ``get_backend("skypilot")``.

The SkyPilot backend module imports ``sky`` lazily inside its methods, so
importing this registry (from views, checks, test collection) stays cheap.
"""

from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from .base import BackendError, BackendUnreachable, ClusterGone, InvalidSpec, NotSupported  # noqa: F401

BACKEND_CLASSES = {
    "local": "clusters.backends.local.LocalBackend",
    "skypilot": "clusters.backends.skypilot.SkyPilotBackend",
}


@cache
def get_backend(name):
    try:
        path = BACKEND_CLASSES[name]
    except KeyError:
        raise InvalidSpec(f"Unknown backend {name!r}") from None
    return import_string(path)()


def enabled_backends():
    return list(settings.SKYDECK_BACKENDS)
