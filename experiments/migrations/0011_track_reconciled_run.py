# The change marker also moves when the reconciler records that it has seen a run, and (on SQLite)
# its counter row is made again if it went (a flush). "Run N finished" on the pages waits for the first.

import importlib

from django.db import migrations


def _tracked():
    tracked = dict(importlib.import_module("experiments.migrations.0010_guardrails").TRACKED)
    tracked["experiments_experiment"] = (*tracked["experiments_experiment"], "reconciled_run")
    return tracked


def track(apps, schema_editor):
    from experiments import revision

    revision.install(schema_editor, _tracked())


def untrack(apps, schema_editor):
    from experiments import revision

    revision.install(schema_editor, importlib.import_module("experiments.migrations.0010_guardrails").TRACKED)


class Migration(migrations.Migration):
    dependencies = [("experiments", "0010_guardrails")]

    operations = [migrations.RunPython(track, untrack)]
