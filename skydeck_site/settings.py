"""SkyDeck settings, read from the environment and parsed strictly.

A malformed value raises ImproperlyConfigured at start-up instead of
surprising someone later. With no environment at all SkyDeck runs on a
SQLite file and a filesystem Celery broker under ``var/``.
"""

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

VAR_DIR = Path(env_str("SKYDECK_VAR_DIR", str(BASE_DIR / "var"))).resolve()

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
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
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
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
except ValueError as exc:  # dj-database-url raises ValueError on a malformed URL
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # web, worker and beat share one file: WAL lets readers run beside the writer,
    # IMMEDIATE takes the write lock up front so transactions never deadlock on upgrade,
    # and the timeout waits for the lock instead of failing with "database is locked".
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    if _db["NAME"] and _db["NAME"] != ":memory:":
        Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
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
STATIC_ROOT = VAR_DIR / "staticfiles"
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

CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", "filesystem://localhost//", {"filesystem", "redis", "rediss", "memory"})
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

SKYDECK_POLL_INTERVAL = env_float("SKYDECK_POLL_INTERVAL", 30.0, minimum=1.0)
SKYDECK_RECONCILE_INTERVAL = env_float("SKYDECK_RECONCILE_INTERVAL", 60.0, minimum=1.0)

CELERY_BEAT_SCHEDULE = {
    "poll": {
        "task": "experiments.tasks.poll",
        "schedule": SKYDECK_POLL_INTERVAL,
        # a backlog of polls is worthless: only the latest view of the world matters
        "options": {"expires": SKYDECK_POLL_INTERVAL},
    },
    "reconcile-all": {
        "task": "experiments.tasks.reconcile_all",
        "schedule": SKYDECK_RECONCILE_INTERVAL,
        "options": {"expires": SKYDECK_RECONCILE_INTERVAL},
    },
}

# --- SkyDeck ------------------------------------------------------------------

SKYDECK_BACKENDS = env_list("SKYDECK_BACKENDS", ["local", "skypilot"])
for _name in SKYDECK_BACKENDS:
    if _name not in {"local", "skypilot"}:
        raise ImproperlyConfigured(f"SKYDECK_BACKENDS: unknown backend {_name!r} (use local, skypilot)")
SKYDECK_DEFAULT_BACKEND = env_str("SKYDECK_DEFAULT_BACKEND", "local")
if SKYDECK_DEFAULT_BACKEND not in {"local", "skypilot"}:
    raise ImproperlyConfigured("SKYDECK_DEFAULT_BACKEND must be 'local' or 'skypilot'")
# Where the local backend keeps its "clusters": one directory each.
SKYDECK_LOCAL_ROOT = Path(env_str("SKYDECK_LOCAL_ROOT", str(VAR_DIR / "local-clusters"))).resolve()
# Capped exponential backoff after a failure: base * 2**(failures-1), at most the cap.
SKYDECK_BACKOFF_BASE = env_float("SKYDECK_BACKOFF_BASE", 15.0)
SKYDECK_BACKOFF_MAX = env_float("SKYDECK_BACKOFF_MAX", 900.0)
# An infrastructure failure retries until this many in one run, then gives up.
SKYDECK_MAX_INFRA_RETRIES = env_int("SKYDECK_MAX_INFRA_RETRIES", 5)
# How long one reconciler may hold an experiment before another may take it over.
SKYDECK_CLAIM_SECONDS = env_float("SKYDECK_CLAIM_SECONDS", 120.0, minimum=1.0)
# A job stuck in LAUNCHING with no request this long is submitted again (same name).
SKYDECK_RESUBMIT_AFTER = env_float("SKYDECK_RESUBMIT_AFTER", 60.0)
# Optional link template for W&B, e.g. https://wandb.ai/team/project/runs/{name}
SKYDECK_WANDB_URL_TEMPLATE = env_str("SKYDECK_WANDB_URL_TEMPLATE", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
