"""SkyDeck settings, read from the environment and parsed strictly.

A malformed value raises ImproperlyConfigured at start-up instead of
surprising someone later. With no environment at all SkyDeck runs on a
SQLite file and a filesystem Celery broker under ``var/``.

Importing this module only computes values: it creates no file or folder.
The folders named in SKYDECK_RUNTIME_DIRS are made when a process starts
(``skydeck_site.apps``).
"""

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name, default=""):
    return os.environ.get(name, default)


def env_bool(name, default=False):
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def env_float(name, default, minimum=0.0):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_int(name, default, minimum=0):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be at least {minimum}")
    return value


def env_list(name, default=()):
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name, default):
    """An absolute path; an empty value means the default, not the current folder."""
    return Path(os.environ.get(name, "").strip() or default).resolve()


def env_url(name, default, schemes):
    raw = os.environ.get(name, "").strip() or default
    parsed = urlparse(raw)
    if parsed.scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be a URL with one of the schemes: {', '.join(sorted(schemes))}"
        )
    if parsed.scheme not in {"sqlite", "filesystem", "memory"} and not parsed.hostname:
        raise ImproperlyConfigured(f"{name}={raw!r} has no host")
    return raw


# --- Core -------------------------------------------------------------------

VAR_DIR = env_path("SKYDECK_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and env_bool("SKYDECK_PRODUCTION", False):
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    # A development key: fine for `make run` on one machine, refused by --deploy checks.
    SECRET_KEY = "django-insecure-skydeck-development-key-change-me-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # First, so the runtime folders exist before any other app starts.
    "skydeck_site",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    # Its templates and static files: /api/docs serves its own Swagger UI, not one from a CDN.
    "ninja",
    "clusters",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "skydeck_site.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "skydeck_site.urls"
WSGI_APPLICATION = "skydeck_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "skydeck_site.context_processors.system_banner",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------

DEFAULT_SQLITE = f"sqlite:///{VAR_DIR / 'skydeck.sqlite3'}"
DATABASE_URL = env_url("DATABASE_URL", DEFAULT_SQLITE, {"sqlite", "postgres", "postgresql", "pgsql"})
try:
    _db = dj_database_url.parse(DATABASE_URL)
except ValueError as exc:  # dj-database-url raises ValueError on a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
_sqlite = _db["ENGINE"] == "django.db.backends.sqlite3"
# Reusing a PostgreSQL connection saves a connect per request; a SQLite "connection" is a file open.
_db["CONN_MAX_AGE"] = env_int("SKYDECK_DB_CONN_MAX_AGE", 0 if _sqlite else 60)
# A connection kept across requests is checked before reuse, so a restarted server costs no error.
_db["CONN_HEALTH_CHECKS"] = True
if _sqlite:
    # web, worker and beat share one file: WAL lets readers run beside the writer,
    # IMMEDIATE takes the write lock up front so transactions never deadlock on upgrade,
    # and the timeout waits for the lock instead of failing with "database is locked".
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so a Celery worker started by a test sees the same database.
    _db["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "experiments:list"
LOGOUT_REDIRECT_URL = "login"

# --- i18n / static ------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Where collectstatic writes; the image keeps it outside the var volume, which would hide a newer copy.
STATIC_ROOT = env_path("SKYDECK_STATIC_ROOT", VAR_DIR / "staticfiles")
# Outside production, serve static files straight from the source folders.
WHITENOISE_USE_FINDERS = not env_bool("SKYDECK_PRODUCTION", False)
WHITENOISE_AUTOREFRESH = WHITENOISE_USE_FINDERS
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env_bool("SKYDECK_MANIFEST_STATIC", not DEBUG and env_bool("SKYDECK_PRODUCTION", False))
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Production hardening (on with SKYDECK_PRODUCTION=true) -------------------

if env_bool("SKYDECK_PRODUCTION", False):
    # SKYDECK_HTTPS=false only for a deployment reached over plain HTTP on a trusted network.
    _https = env_bool("SKYDECK_HTTPS", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", _https)
    SESSION_COOKIE_SECURE = _https
    CSRF_COOKIE_SECURE = _https
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _https else 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    # Preloading is a commitment to HTTPS for every subdomain, made on purpose, not by default.
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Celery -----------------------------------------------------------------

CELERY_BROKER_URL = env_url(
    "CELERY_BROKER_URL", "filesystem://localhost//", {"filesystem", "redis", "rediss", "memory"}
)
_broker_folders = []
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_folders = [VAR_DIR / "broker" / sub for sub in ("queue", "processed", "control")]
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_folders[0]),
        "data_folder_out": str(_broker_folders[0]),
        "processed_folder": str(_broker_folders[1]),
        "control_folder": str(_broker_folders[2]),
        "store_processed": False,
        # The worker looks for new messages this often (kombu's default is 1 s: about two tasks a
        # second with two worker processes, which a bulk start of 200 turned into minutes).
        "polling_interval": 0.1,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")) and env_str("SKYDECK_BROKER_KEY_PREFIX"):
    # Keys of this SkyDeck only, in a Redis shared with others (the test suite uses one of its own).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": env_str("SKYDECK_BROKER_KEY_PREFIX")}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The periodic passes have a queue of their own, which the worker serves beside the default one:
# a backlog of reconciles (a bulk start) never lets polls expire in the queue behind it.
CELERY_TASK_ROUTES = {
    name: {"queue": "periodic"}
    for name in (
        "experiments.tasks.poll",
        "experiments.tasks.reconcile_all",
        "experiments.tasks.sync_logs",
        "experiments.tasks.parse_metrics",
    )
}
# Besides each app's tasks module (found by autodiscovery): the metrics pass.
CELERY_IMPORTS = ["experiments.metric_tasks"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

SKYDECK_POLL_INTERVAL = env_float("SKYDECK_POLL_INTERVAL", 30.0, minimum=1.0)
# While a job is launching or running (or a cluster request is in flight), poll this often instead.
SKYDECK_POLL_ACTIVE_INTERVAL = env_float("SKYDECK_POLL_ACTIVE_INTERVAL", 5.0, minimum=1.0)
SKYDECK_RECONCILE_INTERVAL = env_float("SKYDECK_RECONCILE_INTERVAL", 60.0, minimum=1.0)
# How often the worker refreshes its copies of SkyPilot jobs' output while someone reads them,
# and how often when nobody does (each refresh costs the cluster a process).
SKYDECK_LOG_SYNC_INTERVAL = env_float("SKYDECK_LOG_SYNC_INTERVAL", 5.0, minimum=1.0)
SKYDECK_LOG_SYNC_IDLE_INTERVAL = env_float("SKYDECK_LOG_SYNC_IDLE_INTERVAL", 60.0, minimum=1.0)
# Metrics (docs/metrics.md): how often the worker reads what jobs printed, and how much it keeps.
SKYDECK_METRICS_INTERVAL = env_float("SKYDECK_METRICS_INTERVAL", 5.0, minimum=1.0)
SKYDECK_METRIC_MAX_POINTS = env_int("SKYDECK_METRIC_MAX_POINTS", 10_000, minimum=100)
SKYDECK_METRIC_MAX_SERIES = env_int("SKYDECK_METRIC_MAX_SERIES", 32, minimum=1)
# Who may scrape /metrics besides a staff login: a bearer token, and addresses or networks.
SKYDECK_PROMETHEUS_TOKEN = env_str("SKYDECK_PROMETHEUS_TOKEN")
SKYDECK_PROMETHEUS_ALLOW = env_list("SKYDECK_PROMETHEUS_ALLOW")
for _network in SKYDECK_PROMETHEUS_ALLOW:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"SKYDECK_PROMETHEUS_ALLOW: {_network!r} is not an address or a network (e.g. 10.0.0.0/8,127.0.0.1)"
        ) from None

CELERY_BEAT_SCHEDULE = {
    # Every few seconds; the task itself polls at the idle interval when nothing is in flight.
    "poll": {
        "task": "experiments.tasks.poll",
        "schedule": min(SKYDECK_POLL_ACTIVE_INTERVAL, SKYDECK_POLL_INTERVAL),
        # a backlog of polls is worthless: only the latest view of the world matters
        "options": {"expires": min(SKYDECK_POLL_ACTIVE_INTERVAL, SKYDECK_POLL_INTERVAL)},
    },
    "reconcile-all": {
        "task": "experiments.tasks.reconcile_all",
        "schedule": SKYDECK_RECONCILE_INTERVAL,
        "options": {"expires": SKYDECK_RECONCILE_INTERVAL},
    },
    "sync-logs": {
        "task": "experiments.tasks.sync_logs",
        "schedule": SKYDECK_LOG_SYNC_INTERVAL,
        "options": {"expires": SKYDECK_LOG_SYNC_INTERVAL},
    },
    "parse-metrics": {
        "task": "experiments.tasks.parse_metrics",
        "schedule": SKYDECK_METRICS_INTERVAL,
        "options": {"expires": SKYDECK_METRICS_INTERVAL},
    },
}

# --- SkyDeck ------------------------------------------------------------------

SKYDECK_BACKENDS = env_list("SKYDECK_BACKENDS", ["local", "skypilot"])
for _name in SKYDECK_BACKENDS:
    if _name not in {"local", "skypilot"}:
        raise ImproperlyConfigured(f"SKYDECK_BACKENDS: unknown backend {_name!r} (use local, skypilot)")
# The local backend runs an experiment's command on SkyDeck's own host, as the user SkyDeck runs as.
# Who may: everyone (one person on their own machine), staff, or nobody ("off": a team install's default).
SKYDECK_LOCAL_BACKEND = (
    env_str("SKYDECK_LOCAL_BACKEND", "off" if env_bool("SKYDECK_PRODUCTION", False) else "everyone").strip().lower()
)
if SKYDECK_LOCAL_BACKEND not in {"everyone", "staff", "off"}:
    raise ImproperlyConfigured(f"SKYDECK_LOCAL_BACKEND={SKYDECK_LOCAL_BACKEND!r}: use everyone, staff or off")
if SKYDECK_LOCAL_BACKEND == "off":
    SKYDECK_BACKENDS = [b for b in SKYDECK_BACKENDS if b != "local"]
SKYDECK_DEFAULT_BACKEND = env_str("SKYDECK_DEFAULT_BACKEND", "local" if "local" in SKYDECK_BACKENDS else "skypilot")
if SKYDECK_DEFAULT_BACKEND not in {"local", "skypilot"}:
    raise ImproperlyConfigured("SKYDECK_DEFAULT_BACKEND must be 'local' or 'skypilot'")
# Where the local backend keeps its "clusters": one directory each.
SKYDECK_LOCAL_ROOT = env_path("SKYDECK_LOCAL_ROOT", VAR_DIR / "local-clusters")
# Capped exponential backoff after a failure: base * 2**(failures-1), at most the cap.
SKYDECK_BACKOFF_BASE = env_float("SKYDECK_BACKOFF_BASE", 15.0)
SKYDECK_BACKOFF_MAX = env_float("SKYDECK_BACKOFF_MAX", 900.0)
# An infrastructure failure retries until this many in one run, then gives up.
SKYDECK_MAX_INFRA_RETRIES = env_int("SKYDECK_MAX_INFRA_RETRIES", 5)
# A reconciler's claim on an experiment: renewed while it works, so one held by a killed
# process runs out within this many seconds (at once when the process ran on this host).
SKYDECK_CLAIM_SECONDS = env_float("SKYDECK_CLAIM_SECONDS", 15.0, minimum=3.0)
# A job in LAUNCHING whose submission was never recorded is looked up at the backend by
# name after this long, and submitted again only when the backend has neither job nor request.
SKYDECK_RESUBMIT_AFTER = env_float("SKYDECK_RESUBMIT_AFTER", 10.0)
# A finished run's cluster is stopped (torn down where the infra cannot stop) after this many
# idle minutes, unless the experiment says otherwise or keeps it up.
SKYDECK_IDLE_MINUTES = env_int("SKYDECK_IDLE_MINUTES", 10)
# SkyPilot clusters autostop themselves (set at launch); SkyDeck acts this much later, as a backstop.
SKYDECK_IDLE_GRACE_SECONDS = env_float("SKYDECK_IDLE_GRACE_SECONDS", 120.0)
# Set SkyPilot's own autostop at launch (the cluster goes even while SkyDeck is down). Off, SkyDeck's
# own idle timer is the only one, and acts without the grace above. SkyPilot refreshes the status of a
# cluster with autostop set on every request about it, which costs an extra round trip per queue.
SKYDECK_SKYPILOT_AUTOSTOP = env_bool("SKYDECK_SKYPILOT_AUTOSTOP", True)
# The stall watchdog's default: act when a running job prints nothing for this many minutes
# (an experiment may set its own); 0 leaves it off.
SKYDECK_STALL_MINUTES = env_int("SKYDECK_STALL_MINUTES", 0)
# Notifications: a failed delivery is tried again this many times, the first after this many
# seconds, doubling; links in them start with SKYDECK_BASE_URL (e.g. https://skydeck.example.org).
SKYDECK_NOTIFY_RETRIES = env_int("SKYDECK_NOTIFY_RETRIES", 5)
SKYDECK_NOTIFY_RETRY_SECONDS = env_float("SKYDECK_NOTIFY_RETRY_SECONDS", 30.0, minimum=0.1)
SKYDECK_BASE_URL = env_str("SKYDECK_BASE_URL").strip()
# A poll asks the backends this many things at once, and gives up on an answer after this long.
SKYDECK_POLL_CONCURRENCY = env_int("SKYDECK_POLL_CONCURRENCY", 8, minimum=1)
SKYDECK_POLL_TIMEOUT = env_float("SKYDECK_POLL_TIMEOUT", 60.0, minimum=1.0)
# Log copies refreshed at once (each holds one SkyPilot API-server request while it runs).
SKYDECK_LOG_SYNC_CONCURRENCY = env_int("SKYDECK_LOG_SYNC_CONCURRENCY", 4, minimum=1)
# Optional link template for W&B, e.g. https://wandb.ai/team/project/runs/{name}
SKYDECK_WANDB_URL_TEMPLATE = env_str("SKYDECK_WANDB_URL_TEMPLATE", "")

# --- Celery time limits ---------------------------------------------------------
# The soft limit raises SoftTimeLimitExceeded in the task, so its finally blocks run
# (a poll releases its lease); the hard limit kills the worker process after it.

# Any task not named below.
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TASK_TIME_LIMIT = 300
# A poll (and a log refresh) holds a lease while it runs, renewed every few seconds, so a
# second never starts beside it and a killed one is replaced within the lease's length.
SKYDECK_POLL_LEASE_SECONDS = env_float("SKYDECK_POLL_LEASE_SECONDS", 15.0, minimum=3.0)
# The poll's own deadline for answers comes well before its hard limit.
SKYDECK_POLL_TIME_LIMIT = env_float("SKYDECK_POLL_TIME_LIMIT", 110.0, minimum=15.0)
if SKYDECK_POLL_TIME_LIMIT <= SKYDECK_POLL_TIMEOUT + 10:
    raise ImproperlyConfigured(
        f"SKYDECK_POLL_TIME_LIMIT={SKYDECK_POLL_TIME_LIMIT:g} must be more than SKYDECK_POLL_TIMEOUT + 10 "
        f"({SKYDECK_POLL_TIMEOUT + 10:g}): a poll gives up on slow answers before it is killed"
    )
CELERY_TASK_ANNOTATIONS = {
    "experiments.tasks.poll": {
        "soft_time_limit": SKYDECK_POLL_TIME_LIMIT - 10,
        "time_limit": SKYDECK_POLL_TIME_LIMIT,
    },
    "experiments.tasks.sync_logs": {
        "soft_time_limit": SKYDECK_POLL_TIME_LIMIT - 10,
        "time_limit": SKYDECK_POLL_TIME_LIMIT,
    },
    "experiments.tasks.parse_metrics": {
        "soft_time_limit": SKYDECK_POLL_TIME_LIMIT - 10,
        "time_limit": SKYDECK_POLL_TIME_LIMIT,
    },
    # A launch is only submitted (never waited for); its claim is renewed while it works.
    "experiments.tasks.reconcile_experiment": {"soft_time_limit": 100, "time_limit": 120},
    "experiments.tasks.reconcile_experiments": {"soft_time_limit": 280, "time_limit": 300},
    # Every experiment in turn, each claimed on its own: a long pass is slow, not unsafe.
    "experiments.tasks.reconcile_all": {"soft_time_limit": 540, "time_limit": 600},
}

# Folders each process makes when it starts (skydeck_site.apps); importing the settings makes none.
SKYDECK_RUNTIME_DIRS = [VAR_DIR]
if _sqlite and _db["NAME"] and _db["NAME"] != ":memory:":
    SKYDECK_RUNTIME_DIRS.append(Path(_db["NAME"]).parent)
SKYDECK_RUNTIME_DIRS += _broker_folders

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Trust boundaries (web) ---
# What a client outside may try: guess passwords and tokens, send bodies over the limit, ask
# while the database is down, probe health. Read by skydeck_site.middleware, skydeck_site.health
# and experiments.api.auth.

# A database outage answers 503 with this Retry-After (seconds), JSON under /api/, a small page elsewhere.
SKYDECK_DATABASE_RETRY_AFTER = env_int("SKYDECK_DATABASE_RETRY_AFTER", 10, minimum=1)
# Ahead of the session and CSRF middleware: their view hooks and the views' database errors and
# over-limit bodies are answered here, before anything else reads the session, the user or the body.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware"),
    "skydeck_site.middleware.DatabaseOutageMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware"),
    "skydeck_site.middleware.RequestBodyLimitMiddleware",
)

# Reverse proxies in front of SkyDeck that append the client's address to X-Forwarded-For. With 0 the
# socket's address is the client's (a header anyone can send is not believed).
SKYDECK_PROXY_COUNT = env_int("SKYDECK_PROXY_COUNT", 0)

# A cache every web process shares: failed API tokens are counted there.
SKYDECK_CACHE_URL = env_str("SKYDECK_CACHE_URL").strip()
if SKYDECK_CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env_url("SKYDECK_CACHE_URL", "", {"redis", "rediss"}),
        }
    }
else:
    # A folder under VAR_DIR, made by the cache itself when it first writes; shared by every process there.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }
# The experiments list's drawn rows, kept per process: each is a pure function of its key, so no
# process needs another's, and a lookup costs no I/O.
CACHES["rows"] = {
    "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
    "LOCATION": "skydeck-rows",
    "TIMEOUT": 3600,
    "OPTIONS": {"MAX_ENTRIES": 5000},
}

# Failed logins (django-axes, counted in the database): an address that fails this many times for
# one user name is refused for that user name for the cool-off, even with the right password.
INSTALLED_APPS.append("axes")
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("SKYDECK_LOGIN_FAILURE_LIMIT", 10, minimum=1)
SKYDECK_LOGIN_COOLOFF_MINUTES = env_int("SKYDECK_LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AXES_COOLOFF_TIME = SKYDECK_LOGIN_COOLOFF_MINUTES / 60  # axes reads a float as hours
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "skydeck_site.middleware.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Failures only: a row for every successful login would grow without bound.
AXES_DISABLE_ACCESS_LOG = True

# Failed API tokens (experiments.api.auth), counted per address in the cache: this many in the
# window refuses every token from that address with 429 until the window has passed.
SKYDECK_API_TOKEN_FAILURE_LIMIT = env_int("SKYDECK_API_TOKEN_FAILURE_LIMIT", 30, minimum=1)
SKYDECK_API_TOKEN_FAILURE_WINDOW = env_int("SKYDECK_API_TOKEN_FAILURE_WINDOW", 300, minimum=1)

# Email, from the environment (Django's MAILERS). Password reset mails a link, so its pages exist
# only when email is configured: EMAIL_HOST for SMTP, or another EMAIL_BACKEND (console, file, ...).
_SMTP = "django.core.mail.backends.smtp.EmailBackend"
_email_backend = env_str("EMAIL_BACKEND").strip() or _SMTP
_email_host = env_str("EMAIL_HOST").strip()
SKYDECK_PASSWORD_RESET = bool(_email_host) or _email_backend != _SMTP
# Notifications to a bare email address need it too.
SKYDECK_EMAIL_CONFIGURED = SKYDECK_PASSWORD_RESET
if SKYDECK_PASSWORD_RESET:
    _email_options = {}
    if _email_backend == _SMTP:
        _email_options = {
            "host": _email_host,
            "port": env_int("EMAIL_PORT", 25, minimum=1),
            "username": env_str("EMAIL_HOST_USER"),
            "password": env_str("EMAIL_HOST_PASSWORD"),
            "use_tls": env_bool("EMAIL_USE_TLS", False),
            "use_ssl": env_bool("EMAIL_USE_SSL", False),
            "timeout": 10,  # a reset request waits for the mail server no longer than this
        }
        if _email_options["use_tls"] and _email_options["use_ssl"]:
            raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL cannot both be true")
    MAILERS = {"default": {"BACKEND": _email_backend, "OPTIONS": _email_options}}
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL").strip() or "skydeck@localhost"

# A load balancer probes /healthz over plain HTTP; everything else is still redirected to HTTPS.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
