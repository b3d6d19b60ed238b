import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the web server, a Celery worker and Celery beat together; Ctrl-C stops all three."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default=os.environ.get("SKYDECK_BIND", "127.0.0.1:8000"))
        parser.add_argument("--concurrency", default=os.environ.get("SKYDECK_WORKER_CONCURRENCY", "2"))

    def handle(self, *args, bind, concurrency, **options):
        python = sys.executable
        bindir = os.path.dirname(python)
        commands = {
            "web": [os.path.join(bindir, "gunicorn"), "skydeck_site.wsgi", "--bind", bind,
                    "--workers", "2", "--threads", "4", "--access-logfile", "-", "--graceful-timeout", "5"],
            "worker": [python, "-m", "celery", "-A", "skydeck_site", "worker", "--loglevel=INFO",
                       f"--concurrency={concurrency}", "--hostname=skydeck@%h"],
            "beat": [python, "-m", "celery", "-A", "skydeck_site", "beat", "--loglevel=INFO"],
        }
        procs = {}
        for name, cmd in commands.items():
            procs[name] = subprocess.Popen(cmd)
            self.stdout.write(f"started {name} (pid {procs[name].pid})")
        self.stdout.write(self.style.SUCCESS(f"SkyDeck is running at http://{bind}/ — press Ctrl-C to stop."))

        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        try:
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with code {proc.returncode}; stopping the others.")
                        exit_code = proc.returncode or 1
                        stopping = True
                        break
                time.sleep(0.5)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for proc in procs.values():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
            self.stdout.write("SkyDeck stopped.")
        if exit_code:
            sys.exit(exit_code)
