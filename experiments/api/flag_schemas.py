"""/api/flag-schemas: the flags SkyDeck knows."""

from ninja import Query, Router
from ninja.pagination import paginate

from ..models import FlagSchema
from .errors import responses
from .pagination import Page
from .schemas import FlagSchemaOut, FlagSchemaQuery

router = Router(tags=["flags"])

SEARCH_LIMIT = 200  # a search answers its best matches, not every row


@router.get("", response=responses(list[FlagSchemaOut]))
@paginate(Page)
def list_flag_schemas(request, params: Query[FlagSchemaQuery]):
    """Known flags: imported from models, entered in the admin, or learnt from experiments."""
    namespace = params.namespace or None
    if params.q.strip():
        return FlagSchema.objects.search(params.q, limit=SEARCH_LIMIT, namespace=namespace)
    rows = FlagSchema.objects.order_by("namespace", "path")
    return rows.filter(namespace=namespace) if namespace else rows
