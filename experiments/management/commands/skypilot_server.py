"""The SkyPilot API server as a service of its own, beside the web, the worker and beat.

``make run`` runs this. It starts a local SkyPilot API server only when SkyDeck
needs one (the SkyPilot backend is enabled, no remote server is configured, none
already runs here, and an experiment uses SkyPilot), in the foreground as its
child, and stops it when SkyDeck stops. A server that was already running, or a
remote one, is left alone. The worker never lets the SDK start a server (it asks
the server's health itself first), so an outage shows as one.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils import timezone

from clusters.models import BackendHealth
from experiments.models import Experiment

CHECK_EVERY = 15.0


def local_server_url():
    port = os.environ.get("SKYPILOT_API_SERVER_LOCAL_PORT", "46580")
    return f"http://127.0.0.1:{port}"


def answers(url, timeout=2.0):
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def record(**details):
    health, _ = BackendHealth.objects.get_or_create(backend="skypilot")
    health.details = {**health.details, **details}
    health.save(update_fields=["details"])


class Command(BaseCommand):
    help = "Run the SkyPilot API server SkyDeck needs, if it must start one itself; stop it when SkyDeck stops."

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true", help="Say what would happen and exit (no server is started)."
        )

    def handle(self, *args, once=False, **options):
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        remote = os.environ.get("SKYPILOT_API_SERVER_ENDPOINT", "").strip()
        if "skypilot" not in settings.SKYDECK_BACKENDS:
            self.say("The SkyPilot backend is off (SKYDECK_BACKENDS): no SkyPilot API server is needed.")
            return self.idle(stop, once)
        if remote:
            self.say(
                f"SkyDeck uses the SkyPilot API server at {remote} (SKYPILOT_API_SERVER_ENDPOINT); it is left alone."
            )
            record(url=remote, local=False, started_by_skydeck=False)
            return self.idle(stop, once)
        url = local_server_url()
        if answers(url):
            self.say(f"A SkyPilot API server already runs at {url}: SkyDeck uses it and leaves it running.")
            record(url=url, local=True, started_by_skydeck=False)
            return self.idle(stop, once)
        if once:
            self.say(f"SkyDeck would start a SkyPilot API server at {url} once an experiment uses SkyPilot.")
            return None
        # Start one only when it is needed: a SkyDeck that runs only local experiments never pays for it.
        while not stop.is_set() and not Experiment.objects.filter(backend="skypilot").exists():
            stop.wait(CHECK_EVERY)
        while not stop.is_set():
            self.serve(url, stop)
            stop.wait(10.0)  # it exited by itself: start it again (the System page shows the outage meanwhile)
        return None

    def serve(self, url, stop):
        log = Path(settings.VAR_DIR) / "skypilot-api-server.log"
        env = dict(os.environ)
        sky = str(Path(sys.executable).parent / "sky")
        self.say(f"Starting a SkyPilot API server at {url} for SkyDeck (its log: {log}); it stops with SkyDeck.")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sky, "api", "start", "--foreground"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        record(url=url, local=True, started_by_skydeck=True, started_at=timezone.now().isoformat(), pid=proc.pid)
        try:
            while not stop.is_set() and proc.poll() is None:
                stop.wait(1.0)
        finally:
            if proc.poll() is None:
                self.say("Stopping the SkyPilot API server SkyDeck started.")
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            record(started_by_skydeck=False, stopped_at=timezone.now().isoformat())
        if not stop.is_set():
            self.say(f"The SkyPilot API server exited (code {proc.returncode}); see {log}. Starting it again.")

    def idle(self, stop, once):
        # Stay up beside the other processes (one that exits would stop them all) until SkyDeck stops.
        while not once and not stop.is_set():
            stop.wait(3600)

    def say(self, text):
        self.stdout.write(text)
        self.stdout.flush()
