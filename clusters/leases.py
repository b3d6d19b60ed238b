"""Short leases kept alive while their holder works, so a dead holder is replaced within seconds.

A holder is named ``<host>:<pid>:<random>``. While it works, a thread renews
its lease every few seconds; when it stops (or is killed), renewals stop and the
lease runs out soon after. A holder on this host whose process is gone is
replaced at once, without waiting for the lease to run out.
"""

import os
import socket
import threading
import uuid
from contextlib import contextmanager, suppress

from django.db import connection

_HOST = socket.gethostname()[:40]


def holder_token():
    """A name for one piece of work: this host, this process, and a random part."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:80]


def holder_gone(token):
    """True when ``token`` names a process on this host that no longer runs (its lease may be taken at once)."""
    try:
        host, pid, _ = token.rsplit(":", 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != _HOST or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def kept_alive(renew, every):
    """Call ``renew()`` every ``every`` seconds in a thread until the block ends."""
    stop = threading.Event()

    def run():
        try:
            while not stop.wait(every):
                # A missed renewal only shortens the lease.
                with suppress(Exception):
                    renew()
        finally:
            connection.close()  # this thread's own database connection

    thread = threading.Thread(target=run, name="lease-keeper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
