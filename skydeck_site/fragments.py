"""Rows drawn once and kept while nothing they show changes: the list's rows, a page's jobs and events.

Drawing a table row through the template engine costs far more than the queries
behind it, and between two polls almost every row is the same. Each row is a pure
function of its *facts* (the values it shows, and the request's own choices such
as a selection), so its HTML is kept under a digest of them in the "rows" cache
(in-process: a lookup costs no I/O) and drawn again only when a fact changed, or
the template it comes from did.

Ages in a kept row are those of when it was drawn; the browser counts them on
from their timestamps as soon as the fragment lands (skydeck.js).
"""

import hashlib
from pathlib import Path

from django.conf import settings
from django.core.cache import caches
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe


def _version(templates):
    """Changes when a template the rows are drawn from changes (a deploy, or an edit while developing)."""
    stats = [(Path(settings.BASE_DIR) / "templates" / name).stat() for name in templates]
    return "-".join(f"{st.st_mtime_ns}.{st.st_size}" for st in stats)


def draw_each(request, partial, items, facts_of, context_of, *, templates, into):
    """Set each item's ``into`` attribute to its HTML, drawn with ``partial`` ("file.html#name") or kept.

    ``facts_of(item)`` must hold everything the drawn row depends on; ``templates``
    names every file the partial draws from (its own and those it includes).
    """
    cache = caches["rows"]
    version = _version(templates)
    keys = []
    for item in items:
        digest = hashlib.blake2b(repr(facts_of(item)).encode(), digest_size=16).hexdigest()
        keys.append(f"{partial}:{version}:{digest}")
    kept = cache.get_many(keys)
    drawn = {}
    for item, key in zip(items, keys, strict=True):
        text = kept.get(key)
        if text is None:
            text = drawn[key] = render_to_string(partial, context_of(item), request)
        setattr(item, into, mark_safe(text))  # drawn by the template engine, which escaped it
    if drawn:
        cache.set_many(drawn)
