"""/api/clusters: what the backends last reported."""

from ninja import Router
from ninja.pagination import paginate

from clusters.models import Cluster

from .errors import responses
from .pagination import Page
from .schemas import ClusterOut

router = Router(tags=["clusters"])


@router.get("", response=responses(list[ClusterOut]))
@paginate(Page)
def list_clusters(request):
    """Clusters as the backends last reported them."""
    return Cluster.objects.order_by("backend", "name")
