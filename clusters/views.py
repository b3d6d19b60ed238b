from django.shortcuts import render

from .models import Cluster


def cluster_list(request):
    return render(request, "clusters/list.html", {"clusters": Cluster.objects.all()})
