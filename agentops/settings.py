"""Settings for agentops: one file, every value from an environment variable.

The variables come from the environment, and from the checkout's `.env` file where the
environment does not set them (`make up` writes one on its first run: agentops/localenv.py), so
every manage.py command in any shell sees the configuration the server has. DOTENV_FILE, from
the real environment only, names another file to read, or none when empty: the test suite and
the processes it starts (runs.processes.project_env) set it empty, so a developer's .env never
changes what they test.

The helpers below reject values they do not understand, so a typo fails at start-up with a
message that names the variable and where to change it, instead of quietly meaning "off".
Every variable read here is listed in .env.example (a test keeps the two in step).
"""

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from dotenv import dotenv_values

BASE_DIR = Path(__file__).resolve().parent.parent

# Names of every environment variable these settings read, for the tests of .env.example and
# docker-compose.yml.
ENVIRONMENT_VARIABLES = {"DOTENV_FILE"}


def read_dotenv_file():
    """Put the .env file's variables into the environment, where it does not set them already
    (so the server's child processes inherit them). Returns the file read, or None."""
    name = os.environ.get("DOTENV_FILE", ".env")
    if not name:
        return None
    path = BASE_DIR / name  # an absolute DOTENV_FILE stays as it is
    if not path.is_file():
        return None
    for key, value in dotenv_values(path).items():
        if key not in os.environ and value is not None:
            os.environ[key] = value
            _FROM_DOTENV.add(key)
    return path


_FROM_DOTENV = set()
DOTENV_PATH = read_dotenv_file()


def where_to_set(name):
    """Where a person changes the variable: the .env file it came from, or the environment."""
    if name in _FROM_DOTENV:
        return f"edit {name} in {DOTENV_PATH}"
    if name in os.environ:
        return f"change {name} in the environment (it overrides {DOTENV_PATH or '.env'})"
    return f"set {name} in {DOTENV_PATH or BASE_DIR / '.env'} (`make up` writes one; .env.example lists every variable)"


def refused(name, message):
    """The error for a variable's value, saying where to change it."""
    return ImproperlyConfigured(f"{message}: {where_to_set(name)}")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env(name, default=None):
    ENVIRONMENT_VARIABLES.add(name)
    return os.environ.get(name, default)


def envbool(name, default):
    value = env(name)
    if value is None:
        return default
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise refused(name, f"{name}={value!r} is not understood (use one of 1, true, yes, on, 0, false, no, off)")


def envint(name, default, minimum=None):
    """A whole number; with `minimum`, one below it is refused (a setting nothing could enforce)."""
    value = env(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise refused(name, f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        least = "at least 1" if minimum == 1 else f"{minimum} or more"
        raise refused(name, f"{name}={number} must be {least}")
    return number


def envlist(name, default):
    value = env(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def database_from_url(name, url):
    """Django's DATABASES entry for a postgres:// URL; any other scheme is an error."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise refused(
            name, f"{name}={url!r}: only postgres:// URLs are supported "
            "(for example postgres://postgres@127.0.0.1:5432/agentops)"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise refused(name, f"{name}={url!r} names no database after the host")
    try:
        port = parts.port
    except ValueError:
        raise refused(name, f"{name}={url!r} has a port that is not a number") from None
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    # The journal's writes are prepared statements (runs/recorder.py). Behind a pooler that
    # cannot keep them (PgBouncer in transaction mode), add ?prepare_threshold=none to the URL.
    threshold = options.pop("prepare_threshold", "5").strip().lower()
    if threshold not in ("none", "") and not threshold.isdigit():
        raise refused(name, f"{name}: prepare_threshold={threshold!r} is not a number or none")
    options["prepare_threshold"] = None if threshold in ("none", "") else int(threshold)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": database,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(port or ""),
        "OPTIONS": options,
        # Workers and web processes keep their connection; a health check catches a dead one.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def redis_url(name, default):
    url = env(name, default)
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise refused(name, f"{name}={url!r}: expected a redis:// URL (for example redis://127.0.0.1:6379/0)")
    return url


DEBUG = envbool("DEBUG", False)
# The demo (tools.demo): its agents, the chaos and benchmark agents, and the tables of the
# outside world they act on. Off unless asked for; `make up` and `make test` turn it on.
DEMO = envbool("DEMO", False)

SECRET_KEY = env("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise refused(
            "SECRET_KEY", "SECRET_KEY is not set and DEBUG is off: give it a long random string, "
            "or turn DEBUG on for local use"
        )
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"

# Where people open the dashboard, for the links commands print (start_run --wait).
SITE_URL = env("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

DATABASES = {
    "default": database_from_url(
        "DATABASE_URL", env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/agentops")
    )
}
REDIS_URL = redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "django_htmx",
    "django_rq",
    "template_partials",
    "axes",
    "csp",
    "runs",
    "tools",
    *(["tools.demo"] if DEMO else []),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header (django-csp), with the policy below.
    "runs.headers.ContentSecurityPolicy",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login unless its view is marked @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A NUL in any parameter, or a value a view cannot read: a 400 that names it (runs/requests.py).
    "runs.requests.RefuseCraftedInput",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes): after LOGIN_FAILURE_LIMIT failed logins for one username, or
# from one address, that username or address is locked out for LOGIN_LOCKOUT_MINUTES. A
# success resets the count. The lockout is audited (runs/apps.py).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 5, minimum=1)
_LOCKOUT_MINUTES = envint("LOGIN_LOCKOUT_MINUTES", 15, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=_LOCKOUT_MINUTES)
# What a lockout locks: the username, the address, or both (each on its own). Behind a reverse
# proxy every login comes from the proxy's address, so lock by username only there.
_LOCKOUT_BY = {"username": "username", "address": "ip_address"}
_lockout_by = envlist("LOGIN_LOCKOUT_BY", ["username", "address"])
if not _lockout_by or set(_lockout_by) - set(_LOCKOUT_BY):
    raise refused("LOGIN_LOCKOUT_BY", f"LOGIN_LOCKOUT_BY={','.join(_lockout_by)!r}: use username, address, or both")
AXES_LOCKOUT_PARAMETERS = [_LOCKOUT_BY[name] for name in _lockout_by]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# The attempts are kept in Postgres; Axes' own log lines say what the audit says.
AXES_VERBOSE = False

ROOT_URLCONF = "agentops.urls"
ASGI_APPLICATION = "agentops.asgi.application"

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
                "tools.context_processors.freeze",
                "tools.context_processors.pending_approvals",
                "tools.context_processors.demo",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "runs:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Whitenoise serves straight from the finders, so there is no collectstatic step and no
# STATIC_ROOT.
WHITENOISE_USE_FINDERS = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # A page left open for days keeps its group (the default forgets members after a day).
        "CONFIG": {"hosts": [REDIS_URL], "group_expiry": 7 * 24 * 3600},
    }
}

# The run queue, as django-rq's dashboard (/django-rq/) shows it: named after the database, as
# runs.queue.run_queue names it, so the dashboard shows the queue the workers take jobs from.
RQ_QUEUES = {f"runs.{DATABASES['default']['NAME']}": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600}}

# The runtime.
# Modules that define agents and tools (imported at start-up): by default the demo's when DEMO
# is on, none when it is off.
DEMO_AGENT_MODULES = ["tools.demo.agents", "tools.demo.proving"]
AGENT_MODULES = envlist("AGENT_MODULES", DEMO_AGENT_MODULES if DEMO else [])
for _module in AGENT_MODULES:
    # The demo's modules import its models, which exist only with its app: say so at start-up,
    # not in a traceback from the app registry. (tools.demo and tools.proving: names before
    # issue 8; the first would now load nothing, quietly.)
    if _module in ("tools.demo", "tools.proving"):
        raise refused(
            "AGENT_MODULES", f"AGENT_MODULES names {_module!r}, which has moved: the demo's agents are in "
            f"{','.join(DEMO_AGENT_MODULES)}, loaded by default when DEMO=1"
        )
    if _module.startswith("tools.demo.") and not DEMO:
        raise refused(
            "AGENT_MODULES", f"AGENT_MODULES names {_module!r}, a module of the demo, but DEMO is off "
            "(set DEMO=1, or take the demo's modules out of AGENT_MODULES)"
        )
# How long a worker's claim on a run lasts without a heartbeat. A run whose worker died is
# taken over this long after the last heartbeat (heartbeats come three times per lease).
RUN_LEASE_SECONDS = envint("RUN_LEASE_SECONDS", 30, minimum=1)
# The largest run input any door accepts, in bytes of JSON (runs.moves.start_run).
RUN_INPUT_MAX_BYTES = envint("RUN_INPUT_MAX_BYTES", 1_000_000, minimum=1)

# A run whose lease lapses this many times in a row without a step finishing (its worker died
# at the same place each time: a crash, an out-of-memory kill) needs attention instead of
# being handed on again (runs.sweeper).
RUN_LOST_LEASES_LIMIT = envint("RUN_LOST_LEASES_LIMIT", 3, minimum=1)

# A run that asks for the same tool with the same arguments this many times in a row is in a
# loop: it parks before the call (runs/budgets.py; an agent's budget or a start may say more).
LOOP_REPEAT_LIMIT = envint("LOOP_REPEAT_LIMIT", 3, minimum=2)

# How often the sweeper looks for expired leases and overdue wake-ups.
SWEEP_INTERVAL_SECONDS = envint("SWEEP_INTERVAL_SECONDS", 5, minimum=1)

# The circuit breaker of each tool, shared by the workers through Redis (tools/breakers.py,
# docs/breakers.md): it opens when, within the last BREAKER_WINDOW_SECONDS, at least
# BREAKER_MIN_CALLS attempts of the tool were made and at least BREAKER_FAILURE_PERCENT of them
# failed transiently; it stays open BREAKER_COOLDOWN_SECONDS, then lets one probe call through.
BREAKER_WINDOW_SECONDS = envint("BREAKER_WINDOW_SECONDS", 30, minimum=1)
BREAKER_MIN_CALLS = envint("BREAKER_MIN_CALLS", 20, minimum=1)
BREAKER_FAILURE_PERCENT = envint("BREAKER_FAILURE_PERCENT", 50, minimum=1)
if BREAKER_FAILURE_PERCENT > 100:
    raise refused("BREAKER_FAILURE_PERCENT", f"BREAKER_FAILURE_PERCENT={BREAKER_FAILURE_PERCENT} must be 100 or less "
                  "(a share of the calls, in percent)")
BREAKER_COOLDOWN_SECONDS = envint("BREAKER_COOLDOWN_SECONDS", 30, minimum=1)

# Whether a worker runs each job in a forked work horse (RQ's Worker: a new process, database
# connection and Redis connection per job) or in itself (RQ's SimpleWorker, keeping its
# connections). Leases and fencing, not the fork, protect the journal from a dying worker.
# `manage.py worker --fork/--no-fork` overrides it.
WORKER_FORK = envbool("WORKER_FORK", False)

# The Prometheus endpoint /metrics answers only requests that send "Authorization: Bearer
# METRICS_TOKEN"; while it is empty, /metrics does not exist (404). Scrapers do not log in.
METRICS_TOKEN = env("METRICS_TOKEN", "")

# Four eyes: the person who started a run may not approve its steps.
APPROVALS_FORBID_SELF = envbool("APPROVALS_FORBID_SELF", True)

SESSION_COOKIE_HTTPONLY = True
# Set when the site is served over HTTPS; off by default so the local http:// path works.
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# HTTPS, for a site served over it (docs/security.md has the production settings; `manage.py
# check --deploy` is clean with them). All off by default, so the local http:// path works.
# Strict-Transport-Security: how long browsers must use only HTTPS for this host (0: no header).
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
# Answer a plain http:// request with a redirect to https://.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
# Behind a proxy that ends TLS: the header it sets to "https" on requests that came over HTTPS
# (X-Forwarded-Proto). Only when the proxy always sets or strips it: anyone can send it.
_PROXY_SSL_HEADER = env("SECURE_PROXY_SSL_HEADER", "").strip()
if _PROXY_SSL_HEADER:
    if not all(part.isalnum() for part in _PROXY_SSL_HEADER.split("-")):
        raise refused(
            "SECURE_PROXY_SSL_HEADER", f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r} is not a header name "
            "(for example X-Forwarded-Proto)"
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https")

# Content-Security-Policy (django-csp): scripts, styles and everything else from this site
# only, and nothing inline: no <script> or <style> in a page, no on...= handler, no style=
# attribute, no eval (htmx is told so in base.html's htmx-config). 'self' in connect-src
# covers the live pages' ws:// and wss:// to this host. The django-rq dashboard
# (/django-rq/, staff only) ships inline scripts: runs.headers allows them there alone.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # A refused request is expected (a viewer's forged POST, a page the role may not see): one
    # line, without the traceback Django attaches to it.
    # While Redis is away, RQ's retries say so once a minute, not at every attempt.
    "filters": {"refusals_in_one_line": {"()": "runs.logs.RefusalsInOneLine"},
                "redis_retries_once": {"()": "runs.logs.RedisRetriesOnce"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["refusals_in_one_line", "redis_retries_once"]}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # django-axes says "login failed" at INFO for every failure; its lockout is a WARNING.
    "loggers": {"axes": {"level": "WARNING"}},
}
