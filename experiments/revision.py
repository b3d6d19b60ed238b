"""One number that changes whenever something a page shows changes: the polls' O(1) change marker.

Database triggers bump a counter on every write to what the pages show
(experiments, jobs, events, sweeps, clusters — but not the columns only the
control loop's bookkeeping touches: claims, "last reconciled", when a log was
last read, when a cluster was last seen). Triggers, not code: no write path can
forget it.

SQLite serialises writers, so there the counter is a row (``experiments_revision``)
written inside the writer's transaction: a reader never sees the new number
before the change. On PostgreSQL a row every writer updates would be a lock every
write transaction waits for until it commits — and a deadlock as soon as two
transactions lock rows in different orders. There the counter is a sequence
(``nextval`` takes no lock), which moves before its transaction commits. So each
bumping transaction also holds a shared advisory lock until it ends (shared locks
never wait for each other), and the marker names the transactions holding it when
it was read, read after the counter: a change still in flight then is committed by
the next poll, the set differs, and that poll renders. When nothing is in flight
(nearly always between polls) the marker is the number alone.

A polled fragment's token is this marker plus what the request asks for (query,
page, selection); an unchanged poll costs one small read and answers 204.
"""

import hashlib

from django.db import connection

from .models import Revision

SEQUENCE = "skydeck_revision"
# The shared advisory lock every bumping transaction holds until it ends (PostgreSQL).
ADVISORY_KEY = (5377, 1)


def current():
    """The change marker now: one read of one row (SQLite), or of the sequence and of who is in flight."""
    if connection.vendor != "postgresql":
        value = Revision.objects.filter(pk=1).values_list("value", flat=True).first()
        return str(value or 0)
    with connection.cursor() as cursor:
        # In this order: a writer that moved the counter before this read is either visible to the
        # page's queries (which come later) or among the lock holders read next.
        cursor.execute(f"SELECT last_value FROM {SEQUENCE}")
        value = cursor.fetchone()[0]
        cursor.execute(
            "SELECT virtualtransaction FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
            " AND objsubid = 2 AND pid <> pg_backend_pid()"  # its own writes this connection sees
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ADVISORY_KEY,
        )
        in_flight = sorted(row[0] for row in cursor.fetchall())
    if not in_flight:
        return str(value)
    return f"{value}~{hashlib.blake2b(' '.join(in_flight).encode(), digest_size=6).hexdigest()}"


# Columns whose change a page shows, per table. The others are the control loop's own bookkeeping.
TRACKED = {
    "experiments_experiment": (
        "name", "description", "command", "flags", "flag_style", "accelerators", "num_nodes", "cpus", "memory",
        "infra", "use_spot", "disk_size", "image_id", "setup", "envs", "workdir", "autostop_minutes",
        "keep_cluster_up", "managed", "backend", "restart_policy", "max_restarts", "max_cost",
        "max_runtime_minutes", "limit_action", "stall_minutes", "stall_action", "tags", "sweep_id", "starred",
        "desired_state", "generation", "run_number", "owner_id", "group_id", "observed_generation", "phase",
        "status_reason", "status_message", "failure_count", "next_attempt_at", "cluster_request_id",
        "cluster_request_kind", "cluster_idle_until", "halt_reason", "halt_message", "reconciled_run",
    ),
    "experiments_job": (
        "attempt", "run_number", "generation", "backend", "name", "command", "flags", "resources", "cluster_name",
        "sky_job_id", "launch_request_id", "status", "submitted_at", "started_at", "ended_at", "exit_code",
        "exit_codes", "failure_kind", "failure_reason", "error_message", "cancel_requested_at", "log_path",
        "log_complete", "cost",
    ),
    "experiments_event": (),  # inserted and deleted, never updated
    "experiments_sweep": (
        "name", "description", "base_id", "kind", "parameters", "samples", "seed", "max_concurrent", "max_cost",
        "limit_action", "finished_at", "owner_id", "group_id",
    ),
    "clusters_cluster": (
        "name", "backend", "status", "resources", "num_nodes", "infra", "launched_at", "autostop", "hourly_cost",
        "total_cost", "status_message",
    ),
}  # fmt: skip

# (The row is made again if it went: `manage.py flush`, and a test database flushed between tests.)
BUMP = (
    "INSERT OR IGNORE INTO experiments_revision (id, value) VALUES (1, 0); "
    "UPDATE experiments_revision SET value = value + 1 WHERE id = 1"
)


def trigger_sql(vendor, tracked=TRACKED):
    """The statements that make every tracked change bump the revision, for this database."""
    statements = []
    if vendor == "postgresql":
        statements.append(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
        statements.append(
            "CREATE OR REPLACE FUNCTION skydeck_bump_revision() RETURNS trigger AS $$ "
            f"BEGIN PERFORM pg_advisory_xact_lock_shared{ADVISORY_KEY}; PERFORM nextval('{SEQUENCE}'); "
            "RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        for table, columns in tracked.items():
            update = f" OR UPDATE OF {', '.join(columns)}" if columns else ""
            statements.append(
                f"CREATE TRIGGER skydeck_revision_{table} AFTER INSERT OR DELETE{update} ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION skydeck_bump_revision()"
            )
    else:
        for table, columns in tracked.items():
            events = ["INSERT", "DELETE"] + ([f"UPDATE OF {', '.join(columns)}"] if columns else [])
            for event in events:
                kind = event.split()[0].lower()
                statements.append(
                    f"CREATE TRIGGER skydeck_revision_{table}_{kind} AFTER {event} ON {table} BEGIN {BUMP}; END"
                )
    return statements


def drop_sql(vendor, tracked=TRACKED):
    statements = []
    for table, columns in tracked.items():
        if vendor == "postgresql":
            statements.append(f"DROP TRIGGER IF EXISTS skydeck_revision_{table} ON {table}")
        else:
            for kind in ("insert", "delete") + (("update",) if columns else ()):
                statements.append(f"DROP TRIGGER IF EXISTS skydeck_revision_{table}_{kind}")
    if vendor == "postgresql":
        statements.append("DROP FUNCTION IF EXISTS skydeck_bump_revision()")
    return statements


def drop_everything_sql(vendor, tracked=TRACKED):
    """What uninstalling leaves behind nothing of (the triggers, the function, the sequence)."""
    extra = [f"DROP SEQUENCE IF EXISTS {SEQUENCE}"] if vendor == "postgresql" else []
    return drop_sql(vendor, tracked) + extra


def install(schema_editor, tracked=TRACKED):
    """(Re)create the triggers (a migration passes the columns as they stand at that migration)."""
    vendor = schema_editor.connection.vendor
    for statement in drop_sql(vendor, tracked) + trigger_sql(vendor, tracked):
        schema_editor.execute(statement)
