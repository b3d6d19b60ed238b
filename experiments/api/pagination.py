"""Lists answer one page at a time: ``{"items", "count", "limit", "offset", "next_offset"}``."""

from typing import Any

from ninja import Field, Schema
from ninja.pagination import LimitOffsetPagination


class Page(LimitOffsetPagination):
    """ninja's limit/offset pagination, saying where the next page starts."""

    class Input(Schema):
        limit: int = Field(50, ge=1, le=500, description="At most this many items")
        offset: int = Field(0, ge=0, le=10**12, description="Skip this many items")

    class Output(Schema):
        items: list[Any]
        count: int
        limit: int
        offset: int
        next_offset: int | None = Field(description="Pass as offset for the next page; null on the last page")

    def paginate_queryset(self, queryset, pagination, request, **params):
        start, limit = pagination.offset, pagination.limit
        count = self._items_count(queryset)
        items = list(queryset[start : start + limit])
        end = start + len(items)
        return {
            "items": items,
            "count": count,
            "limit": limit,
            "offset": start,
            "next_offset": end if end < count else None,
        }
