"""Settings for the test suite: the real settings, with a private scratch area.

Set before the real settings load, so a Celery worker or web server that a
test starts as a subprocess inherits the same environment.
"""

import os
import tempfile

_scratch = tempfile.mkdtemp(prefix="skydeck-test-")
# One scratch area per test process: with pytest-xdist each worker (gw0, gw1, …) gets its own,
# while what a worker starts (a Celery worker, a web server) inherits its worker's.
_process = os.environ.get("PYTEST_XDIST_WORKER", "main")
_owner = os.environ.get("SKYDECK_TEST_SCRATCH_OF")
if _owner is not None and _owner != _process:  # inherited from the process that started the workers
    os.environ["SKYDECK_VAR_DIR"] = os.path.join(_scratch, "var")
else:
    os.environ.setdefault("SKYDECK_VAR_DIR", os.path.join(_scratch, "var"))
os.environ["SKYDECK_TEST_SCRATCH_OF"] = _process
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
# `import sky` writes under $HOME; give it a private one unless a test run points
# it at a configured SkyPilot client home (the Slurm end-to-end tests do).
os.environ["HOME"] = os.environ.get("SKYDECK_TEST_SKY_HOME") or os.path.join(_scratch, "home")
os.makedirs(os.environ["HOME"], exist_ok=True)

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SKYDECK_BACKOFF_BASE = 0.0
