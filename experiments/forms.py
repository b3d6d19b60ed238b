from django import forms

from .models import Experiment


class ExperimentForm(forms.ModelForm):
    class Meta:
        model = Experiment
        fields = [
            "name", "description", "command", "flags", "backend", "accelerators", "num_nodes", "cpus",
            "memory", "infra", "use_spot", "disk_size", "image_id", "setup", "envs", "workdir",
            "restart_policy", "max_restarts", "tags", "desired_state",
        ]
