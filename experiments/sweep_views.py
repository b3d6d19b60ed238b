"""Sweep pages (filled in by the sweeps work)."""

from django.shortcuts import get_object_or_404, render

from .models import Sweep


def sweep_list(request):
    return render(request, "experiments/sweep_list.html", {"sweeps": Sweep.objects.all()})


def sweep_detail(request, name):
    sweep = get_object_or_404(Sweep, name=name)
    return render(request, "experiments/sweep_detail.html", {"sweep": sweep})
