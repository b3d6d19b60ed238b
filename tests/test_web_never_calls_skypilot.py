"""The web process never calls SkyPilot, for any page, fragment or API endpoint.

A fresh process (the way gunicorn starts) gets every page and polled fragment the
dashboard has, and every GET of the API, for SkyPilot experiments with jobs,
clusters and logs; SkyPilot's SDK must still not be imported at the end. A
process that never imports ``sky`` cannot call it.
"""

import subprocess
import sys
import textwrap

from tests.support import ROOT

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    os.environ["SKYDECK_VAR_DIR"] = tempfile.mkdtemp()
    os.environ["DATABASE_URL"] = "sqlite:///" + os.environ["SKYDECK_VAR_DIR"] + "/db.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = "skydeck_site.settings"
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from django.test import Client
    from clusters.models import BackendHealth, Cluster
    from experiments import intent, logs
    from experiments.models import ApiToken, Experiment, Job, Sweep

    user = get_user_model().objects.create_superuser("boss", password="pw")
    actor = intent.Actor(user, "user")
    exp = intent.create(actor, Experiment(name="sky-exp", command="python train.py", backend="skypilot", infra="slurm"),
                        desired_state="RUNNING")
    sweep = Sweep.objects.create(name="sky-sweep", base=exp, parameters={"lr": [1]}, owner=user)
    job = Job.objects.create(experiment=exp, attempt=1, run_number=1, generation=1, backend="skypilot",
                             name="sd-sky-exp-1", command="python train.py", cluster_name="sd-sky-exp", sky_job_id=1,
                             status="RUNNING")
    job.log_path = logs.path_for(job)
    job.save()
    os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
    open(job.log_path, "w").write("epoch 1\\n")
    Cluster.objects.create(backend="skypilot", name="sd-sky-exp", status="UP")
    Cluster.objects.create(backend="skypilot", name="someone-else", status="UP")
    BackendHealth.objects.create(backend="skypilot", reachable=True, details={"url": "http://127.0.0.1:9"})
    key = ApiToken.issue(user)[1]

    client = Client()
    client.force_login(user)
    hx = {"HX-Request": "true"}
    pages = ["/", "/?token=x", "/experiments/new/", "/experiments/sky-exp/", "/experiments/sky-exp/?part=live",
             "/experiments/sky-exp/edit/", "/experiments/sky-exp/clone/", "/experiments/sky-exp/jobs/1/",
             "/experiments/sky-exp/jobs/1/log/?offset=0", "/experiments/flags/row/", "/experiments/flags/search/?q=l",
             "/sweeps/", "/sweeps/new/", "/sweeps/sky-sweep/", "/clusters/", "/system/", "/account/tokens/",
             "/clusters/?selected=skypilot/someone-else", "/account/notifications/",
             "/account/notifications/?experiment=sky-exp",
             "/admin/", "/admin/experiments/experiment/", f"/admin/experiments/experiment/{exp.pk}/change/",
             "/admin/experiments/job/", "/admin/clusters/cluster/"]
    for url in pages:
        for headers in ({}, hx):
            status = client.get(url, headers=headers).status_code
            assert status in (200, 204), (url, status)
    api = ["/api/experiments", "/api/experiments/sky-exp", "/api/experiments/sky-exp/status",
           "/api/experiments/sky-exp/jobs", f"/api/jobs/{job.pk}/logs", "/api/clusters", "/api/health",
           "/api/flag-schemas", "/api/sweeps", "/api/sweeps/sky-sweep", "/api/openapi.json", "/api/subscriptions"]
    for url in api:
        status = Client().get(url, headers={"Authorization": f"Bearer {key}"}).status_code
        assert status == 200, (url, status)
    # The actions too: they record intent and hand the work to the worker.
    client.post("/experiments/sky-exp/state/", {"state": "STOPPED"})
    client.post("/clusters/skypilot/someone-else/down/", {"confirmed": "1"})
    client.post("/clusters/orphans/", {"action": "stop", "all_orphans": "1"})
    client.post("/clusters/orphans/", {"action": "down", "all_orphans": "1", "confirmed": "1"})
    client.post("/account/notifications/experiment/sky-exp/")
    client.post("/account/notifications/sweep/sky-sweep/")
    client.post("/account/notifications/", {"target": "json://127.0.0.1:9/h", "topics": ["job_failed"]})
    Client().post(f"/api/jobs/{job.pk}/cancel", headers={"Authorization": f"Bearer {key}"})
    print("SKY-IMPORTED" if "sky" in sys.modules else "SKY-NEVER-IMPORTED")
    """
)


def test_no_page_fragment_or_api_endpoint_calls_skypilot(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CELERY_BROKER_URL": "memory://"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("SKY-NEVER-IMPORTED"), out.stdout[-2000:]
